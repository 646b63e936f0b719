#!/usr/bin/env python3
"""Compiles every cuda/*.cu kernel file to PTX for sm_80 and sm_90 with NVRTC and fails on any
error or warning, so that the CUDA backend's kernels are checked on machines without a GPU
(CI). NVRTC comes from the `nvidia-cuda-nvrtc-cu12` wheel (scripts/requirements-ci.txt) and is
driven through ctypes with the same options as src/cuda/compile.rs.

Usage: python scripts/nvrtc_crosscheck.py [--lib PATH/libnvrtc.so.12] [--out DIR]
"""
import argparse
import ctypes
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ["compute_80", "compute_90"]
# Keep in sync with src/cuda/compile.rs (NVRTC_OPTIONS).
OPTIONS = ["--std=c++17", "--fmad=true"]


def find_libnvrtc():
    try:
        import nvidia.cuda_nvrtc  # the nvidia-cuda-nvrtc-cu12 wheel

        base = list(nvidia.cuda_nvrtc.__path__)[0]
        hits = sorted(glob.glob(os.path.join(base, "lib", "libnvrtc.so*")))
        hits = [h for h in hits if "builtins" not in h and ".alt." not in h]
        if hits:
            return hits[0]
    except ImportError:
        pass
    return "libnvrtc.so.12"


class Nvrtc:
    def __init__(self, path):
        self.lib = ctypes.CDLL(path)
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)))
        self.version = (major.value, minor.value)

    def check(self, rc):
        if rc != 0:
            raise RuntimeError(self.lib.nvrtcGetErrorString(rc).decode())

    def compile(self, name, source, headers, options):
        prog = ctypes.c_void_p()
        hnames = list(headers)
        hsrcs = (ctypes.c_char_p * len(hnames))(*[headers[h].encode() for h in hnames])
        hnames_c = (ctypes.c_char_p * len(hnames))(*[h.encode() for h in hnames])
        self.check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(),
                                               len(hnames), hsrcs, hnames_c))
        try:
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            rc = self.lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self.check(self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)))
            log = ctypes.create_string_buffer(size.value)
            self.check(self.lib.nvrtcGetProgramLog(prog, log))
            ptx = b""
            if rc == 0:
                self.check(self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size)))
                buf = ctypes.create_string_buffer(size.value)
                self.check(self.lib.nvrtcGetPTX(prog, buf))
                ptx = buf.value
            return rc, log.value.decode(errors="replace").strip(), ptx
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", default=None, help="libnvrtc to load (default: from the wheel)")
    ap.add_argument("--out", default=None, help="also write the PTX files here")
    args = ap.parse_args()
    lib = args.lib or find_libnvrtc()
    nv = Nvrtc(lib)
    print(f"NVRTC {nv.version[0]}.{nv.version[1]} ({lib})")
    headers = {os.path.basename(p): open(p).read() for p in sorted(glob.glob(os.path.join(ROOT, "cuda", "*.cuh")))}
    sources = sorted(glob.glob(os.path.join(ROOT, "cuda", "*.cu")))
    if not sources:
        print("no cuda/*.cu files found", file=sys.stderr)
        return 1
    failures = 0
    for path in sources:
        name = os.path.basename(path)
        src = open(path).read()
        for arch in ARCHS:
            rc, log, ptx = nv.compile(name, src, headers, OPTIONS + [f"--gpu-architecture={arch}"])
            entries = ptx.count(b".entry")
            if rc != 0 or log:
                failures += 1
                print(f"FAIL {name} {arch}:\n{log}")
            elif entries == 0:
                failures += 1
                print(f"FAIL {name} {arch}: no kernel entry points in the PTX")
            else:
                print(f"ok   {name} {arch}: {entries} kernels, {len(ptx)} bytes of PTX")
                if args.out:
                    os.makedirs(args.out, exist_ok=True)
                    with open(os.path.join(args.out, f"{name[:-3]}.{arch}.ptx"), "wb") as f:
                        f.write(ptx)
    print(f"{len(sources) * len(ARCHS) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
