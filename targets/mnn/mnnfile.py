"""Reading an ``.mnn`` file without MNN: the flatbuffer of MNN's schema (``schema/default/MNN.fbs``,
``CaffeOp.fbs``, ``Tensor.fbs`` in alibaba/MNN), only the parts edgex needs.

A ``.mnn`` file is one flatbuffer whose root is a ``Net``. What is read here, and why:

- ``Net.oplists``: each ``Op``'s name and type, and for a convolution (``Convolution2D``, which
  MNN's converter also makes of an ONNX Gemm/MatMul with constant weights) where its weights,
  bias, int8 weights and their scales lie in the file (byte offsets, so planted-defect tests can
  patch them in place);
- ``Net.extraTensorDescribe``: the int8 grid (scale, zero point, clamp range) mnnquant writes for
  each tensor it quantizes;
- ``Net.bizCode``.

How each precision stores a convolution's weights (measured on MNN 3.6.1's converter):

- fp32: ``Convolution2D.weight`` (float32, ``[out, in/group * kh * kw]`` row-major);
- fp16 (``--fp16``): ``quanParameter`` (``IDSTQuan``) ``type`` 3, ``buffer`` the raw float16 values;
- int8 weights (``--weightQuantBits 8``, and mnnquant's int8): ``IDSTQuan`` ``type`` 1 whose
  ``buffer`` is IDSTEncoder's 8-bit blob (``[ndim u8][dims u16 or u32][count u8][count value
  bytes][values]``, each value stored as ``q + 128``) and ``alpha`` one scale per output channel
  (symmetric) or a (min, scale) pair per channel (asymmetric); mnnquant's full int8 also sets
  ``scaleIn``/``scaleOut`` (the activations' scales) and ``symmetricQuan``'s clamp range.

The bias always stays float32 in ``Convolution2D.bias``.

No MNN import: this runs in ``edgex validate``'s describe step and in tests, and MNN's own Python
package is never needed to read a file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: OpType values (MNN.fbs ``enum OpType``) edgex reads
CONVOLUTIONS = {12: "Convolution", 13: "ConvolutionDepthwise", 17: "Deconvolution", 18: "DeconvolutionDepthwise"}
OP_INPUT = 34
#: OpParameter union tag of ``Convolution2D``
_CONVOLUTION_2D = 9
#: IDSTQuan.type values
QUAN_INT8 = 1
QUAN_FP16 = 3


class NotMnn(ValueError):
    """The bytes are not an MNN model."""


class _Table:
    """One flatbuffer table: its fields by slot number (the order of the schema's fields, a
    union taking two slots: its type, then its value)."""

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        if not 0 <= vtable < len(buf) - 4:
            raise NotMnn("bad vtable")
        self.vtable = vtable
        self.vtable_size = struct.unpack_from("<H", buf, vtable)[0]

    def _offset(self, slot: int) -> int:
        at = 4 + 2 * slot
        if at >= self.vtable_size:
            return 0
        return struct.unpack_from("<H", self.buf, self.vtable + at)[0]

    def has(self, slot: int) -> bool:
        return self._offset(slot) != 0

    def scalar(self, slot: int, fmt: str, default):
        offset = self._offset(slot)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + offset)[0] if offset else default

    def scalar_at(self, slot: int) -> int | None:
        """The byte position of a scalar field (None when it holds its default, unstored)."""
        offset = self._offset(slot)
        return self.pos + offset if offset else None

    def _indirect(self, slot: int) -> int | None:
        offset = self._offset(slot)
        if not offset:
            return None
        at = self.pos + offset
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, slot: int) -> "_Table | None":
        at = self._indirect(slot)
        return None if at is None else _Table(self.buf, at)

    def vector(self, slot: int) -> tuple[int, int] | None:
        """(byte position of the first element, element count)."""
        at = self._indirect(slot)
        if at is None:
            return None
        return at + 4, struct.unpack_from("<I", self.buf, at)[0]

    def tables(self, slot: int) -> list["_Table"]:
        found = self.vector(slot)
        if found is None:
            return []
        start, count = found
        return [_Table(self.buf, start + 4 * i + struct.unpack_from("<I", self.buf, start + 4 * i)[0]) for i in range(count)]

    def string(self, slot: int) -> str | None:
        found = self.vector(slot)
        if found is None:
            return None
        start, count = found
        return self.buf[start:start + count].decode("utf-8", "replace")

    def array(self, slot: int, dtype: str) -> "Span | None":
        found = self.vector(slot)
        return None if found is None else Span(found[0], found[1], dtype)


@dataclass(frozen=True)
class Span:
    """Where an array lies in the file: byte position, element count, numpy dtype."""

    start: int
    count: int
    dtype: str

    @property
    def nbytes(self) -> int:
        return self.count * np.dtype(self.dtype).itemsize

    def read(self, buf: bytes) -> np.ndarray:
        return np.frombuffer(buf, self.dtype, self.count, self.start).copy()

    def write(self, buf: bytearray, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, self.dtype).tobytes()
        if len(data) != self.nbytes:
            raise ValueError(f"{len(data)} bytes for a span of {self.nbytes}")
        buf[self.start:self.start + self.nbytes] = data


@dataclass
class Conv:
    """A convolution op (or a Gemm/MatMul MNN made one of) and where its numbers lie."""

    name: str
    op_type: str
    out_channels: int
    weight: Span | None = None  # float32
    bias: Span | None = None  # float32
    quan_type: int = 0  # IDSTQuan.type: 0 none, 1 int8, 3 fp16
    buffer: Span | None = None  # IDSTQuan.buffer (int8 blob or raw fp16)
    alpha: Span | None = None  # per-channel scales (or min/scale pairs)
    bits: int = 0
    scale_in: float = 0.0
    scale_out: float = 0.0
    scale_in_at: int | None = None
    scale_out_at: int | None = None
    clamp: tuple[int, int] | None = None  # symmetricQuan's (clampMin, clampMax) where mnnquant set it
    input_index: int = -1  # the tensors it reads and writes (indexes into MnnModel.tensor_names)
    output_index: int = -1
    int8_values: Span | None = None  # the blob's values (uint8, q + 128)

    @property
    def stored(self) -> str:
        return {QUAN_INT8: "int8", QUAN_FP16: "fp16"}.get(self.quan_type, "fp32" if self.weight is not None else "?")

    @property
    def activations_int8(self) -> bool:
        """Whether mnnquant made this convolution int8 end to end (its input and output scales set)."""
        return self.quan_type == QUAN_INT8 and (self.scale_in != 0.0 or self.scale_out != 0.0)

    @property
    def asymmetric_weights(self) -> bool:
        return self.alpha is not None and self.alpha.count == 2 * self.out_channels


@dataclass(frozen=True)
class TensorGrid:
    """One tensor's int8 grid (``TensorQuantInfo``), and where its scale lies in the file."""

    index: int
    scale: float
    zero: float
    low: float
    high: float
    scale_at: int | None


@dataclass
class MnnModel:
    path: Path
    buf: bytes
    biz_code: str | None
    ops: list[tuple[str, int]]  # (name, OpType) in file order
    convolutions: list[Conv]
    grids: list[TensorGrid] = field(default_factory=list)
    tensor_names: list[str] = field(default_factory=list)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # each Input op's dims

    @property
    def input_names(self) -> list[str]:
        return [name for name, op_type in self.ops if op_type == OP_INPUT]


def _int8_values(buf: bytes, blob: Span) -> Span | None:
    """The values of IDSTEncoder's 8-bit blob: after its dims and its table of 256 values."""
    at = blob.start
    ndim = buf[at]
    dims = struct.unpack_from(f"<{ndim}H", buf, at + 1)
    header = 1 + 2 * ndim
    count = int(np.prod(dims))
    if 1 + 2 * ndim + 1 + 256 + count != blob.count:  # u32 dims (a dimension above 65535)
        dims = struct.unpack_from(f"<{ndim}I", buf, at + 1)
        header = 1 + 4 * ndim
        count = int(np.prod(dims))
    table_size = buf[at + header] or 256
    start = at + header + 1 + table_size
    if table_size != 256 or start + count != blob.start + blob.count:
        return None  # another encoding (fewer bits, sparse): not read
    return Span(start, count, "uint8")


def read(path: Path) -> MnnModel:
    """The parts of an .mnn file edgex uses; NotMnn when it is not one."""
    path = Path(path)
    buf = path.read_bytes()
    if len(buf) < 16:
        raise NotMnn("too short")
    try:
        root = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
        ops_tables = root.tables(3)
        if not ops_tables:
            raise NotMnn("no ops")
        ops, convolutions, input_shapes = [], [], {}
        for op in ops_tables:
            name = op.string(3) or ""
            op_type = op.scalar(5, "i", 0)
            ops.append((name, op_type))
            if op_type == OP_INPUT:
                main = op.table(2)
                dims = main.array(0, "<i4") if main is not None else None
                if dims is not None:
                    input_shapes[name] = tuple(int(d) for d in dims.read(buf))
            if op_type not in CONVOLUTIONS or op.scalar(1, "B", 0) != _CONVOLUTION_2D:
                continue
            main = op.table(2)
            common = main.table(0) if main is not None else None
            if common is None:
                continue
            conv = Conv(name, CONVOLUTIONS[op_type], common.scalar(10, "i", 0), main.array(1, "<f4"), main.array(2, "<f4"))
            reads, writes = op.array(0, "<i4"), op.array(4, "<i4")
            conv.input_index = int(reads.read(buf)[0]) if reads and reads.count else -1
            conv.output_index = int(writes.read(buf)[0]) if writes and writes.count else -1
            quan = main.table(3)
            if quan is not None:
                conv.quan_type = quan.scalar(2, "i", 0)
                conv.buffer = quan.array(0, "int8")
                conv.alpha = quan.array(1, "<f4")
                conv.bits = quan.scalar(7, "i", 0)
                conv.scale_in, conv.scale_in_at = quan.scalar(5, "f", 0.0), quan.scalar_at(5)
                conv.scale_out, conv.scale_out_at = quan.scalar(6, "f", 0.0), quan.scalar_at(6)
                if conv.quan_type == QUAN_FP16 and conv.buffer is not None:
                    conv.buffer = Span(conv.buffer.start, conv.buffer.count // 2, "<f2")
                elif conv.quan_type == QUAN_INT8 and conv.buffer is not None:
                    conv.int8_values = _int8_values(buf, conv.buffer)
            symmetric = main.table(4)
            if symmetric is not None:
                conv.clamp = (symmetric.scalar(8, "b", -128), symmetric.scalar(9, "b", 127))
            convolutions.append(conv)
        grids = []
        for describe in root.tables(1):
            info = describe.table(4)
            if info is not None:
                grids.append(TensorGrid(
                    describe.scalar(1, "i", 0), info.scalar(0, "f", 0.0), info.scalar(1, "f", 0.0),
                    info.scalar(2, "f", -128.0), info.scalar(3, "f", 127.0), info.scalar_at(0),
                ))
        names = []
        found = root.vector(7)
        if found is not None:
            start, count = found
            for i in range(count):
                at = start + 4 * i + struct.unpack_from("<I", buf, start + 4 * i)[0]
                size = struct.unpack_from("<I", buf, at)[0]
                names.append(buf[at + 4:at + 4 + size].decode("utf-8", "replace"))
        return MnnModel(path, buf, root.string(0), ops, convolutions, grids, names, input_shapes)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise NotMnn("its offsets point outside the file") from exc


def precision_of(model: MnnModel) -> str:
    """fp32, fp16, dynamic-int8 (int8 weights, float activations) or int8 (mnnquant's full int8)."""
    stored = {conv.quan_type for conv in model.convolutions}
    if any(conv.activations_int8 for conv in model.convolutions):
        return "int8"
    if QUAN_INT8 in stored:
        return "dynamic-int8"
    if QUAN_FP16 in stored:
        return "fp16"
    return "fp32"


def conv_weights(model: MnnModel, conv: Conv) -> np.ndarray:
    """A convolution's weights as float ``[out, rest]``: dequantized from int8 with their scales."""
    buf = model.buf
    if conv.quan_type == QUAN_FP16:
        values = conv.buffer.read(buf).astype(np.float32)
    elif conv.quan_type == QUAN_INT8:
        q = conv.int8_values.read(buf).astype(np.float32).reshape(conv.out_channels, -1) - 128.0
        alpha = conv.alpha.read(buf)
        if conv.asymmetric_weights:
            return q * alpha[1::2, None] + alpha[0::2, None] + 128.0 * alpha[1::2, None]
        return q * alpha[:, None]
    else:
        values = conv.weight.read(buf)
    return values.reshape(conv.out_channels, -1)
