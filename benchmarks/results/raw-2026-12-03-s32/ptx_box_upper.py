"""Offline sm_90 PTX of page_box_upper's kernel at the GPU's long-row form: wgmma kind, cp.async, conversions."""
import re, sys
sys.path.insert(0, "tests")
from compile_specs import compile_for_sm90
from entmaxkv.kernels.page_box_upper import _page_box_upper_kernel as k
t = lambda v: ["tensor", v]
for dt in ("float16", "bfloat16"):
    args = dict(q=t(dt), code_min=t("int8"), code_max=t("int8"), box_scale=t("float32"), box_l1=t("float32"),
                seq_lens=t("int64"), upper=t("float32"), attn_scale=["float", 0.088], slack=["float", 3e-5],
                H=["int", 8], P=["int", 8208], D=["int", 128], S=["int", 16], G=["int", 4], GD=["int", 16],
                BLOCK_P=["int", 64], BLOCK_D=["int", 128], ITERS=["int", 4], STAGES=["int", 3])
    c = compile_for_sm90(k, args, 4, lambda arg, kind, v: kind == "tensor" or arg in ("D", "P"))
    ptx = c.asm["ptx"]
    print(dt, "wgmma", sorted(set(re.findall(r"wgmma\.mma_async[^ ]*", ptx))), len(re.findall(r"wgmma\.mma_async", ptx)),
          "cp.async", ptx.count("cp.async.cg") + ptx.count("cp.async.ca"), "cvt", ptx.count("cvt."), "shared", c.metadata.shared)
