"""edgex check for ncnn: placeholder replaced below."""
