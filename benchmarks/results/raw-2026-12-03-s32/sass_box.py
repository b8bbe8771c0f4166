import sys, re, collections
sys.path.insert(0, "tests")
import triton.language as tl
from compile_specs import compile_for_sm90
from entmaxkv.kernels.page_scores import _page_scores_kernel as k
def spec(box, dt):
    t = lambda v: ["tensor", v]
    a = dict(q=t(dt), k_min=t("int8" if box else dt), k_max=t("int8" if box else dt), k_mean=t(dt), k_std=t(dt),
             seq_lens=t("int64"), slopes=t("float32"), k_pages=t(dt), box_scale=t("float32"),
             upper=t("float32"), absmax=t("float32"), mean=t("float32"), sigma=t("float32"), newest_max=t("float32"),
             newest_mag=t("float32"), newest_scores=t("float32"), newest_floor=t("float32"),
             scale=["float", 0.088], slack=["float", 1e-6], gamma=["float", 1e-5], alibi_eps=["float", 1e-7], nu=["float", 0.0],
             H=["int", 8], P=["int", 8208], D=["int", 128],
             S=["int", 16], G=["int", 4], BLOCK_P=["int", 64], BLOCK_D=["int", 128], BLOCK_S=["int", 16],
             WORK=["tldtype", "fp32"], HAS_ALIBI=["bool", False], WITH_SIGMA=["bool", False], WITH_NEWEST=["bool", True],
             HAS_NU=["bool", False], WITH_MEAN=["bool", False], CHUNK=["int", 32], VEC=["int", 8], DOT=["bool", True],
             GD=["int", 16], DOT_F32=["bool", False], ITERS=["int", 4], STAGES=["int", 3], PDL=["bool", False], BOX=["bool", box])
    return a
for box in (False, True):
    c = compile_for_sm90(k, spec(box, "float16"), num_warps=4, aligned=lambda arg, kind, v: kind == "tensor" or arg in ("D", "P"))
    ptx, sass = c.asm["ptx"], c.asm.get("sass", "")
    print(list(c.asm.keys()), re.findall(r"\.maxnreg.*|\.reqntid.*", ptx)[:2])
    ops = collections.Counter(re.findall(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\d+\s+)?([A-Z0-9_]+)", sass, re.M))
    print(f"BOX={box}: shared {c.metadata.shared} cp.async {ptx.count('cp.async.cg')+ptx.count('cp.async.ca')} "
          f"wgmma {ptx.count('wgmma.mma_async')} mma.sync {ptx.count('mma.sync')} ld.global {ptx.count('ld.global')} cvt {ptx.count('cvt.')} sass {sum(ops.values())}")
    print("   top:", ops.most_common(14))
