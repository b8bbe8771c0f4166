import sys, math, torch
sys.path.insert(0, "/tmp/e2e31")
from survivors import model_inputs, stream_inputs, HKV, G, S, SCALE, BF
def rounds(s):
    z = 0.5 * s.double(); zmax = z.max(); x = zmax - 1
    z = z[z > x]
    for it in range(1, 17):
        sup = z > x; u = (z - x)[sup]; k = max(int(sup.sum()), 1)
        s1, s2 = u.sum(), (u * u).sum(); mean = s1 / k
        ss = max(float(s2 - k * mean * mean), 0.0)
        tau = x + mean - math.sqrt(max((1 - ss) / k, 0))
        if float(z[sup].min()) > tau: return it, int(z.numel()), k
        x = min(max(x + (s2 - 1) / max(2 * s1, 1e-300), x), zmax)
    return 99, int(z.numel()), k
n = int(sys.argv[1])
for w in ("model", "stream"):
    k, q, kn = (model_inputs if w == "model" else stream_inputs)(n)
    K = torch.cat([k, kn[:, None, :].to(BF).float()], 1)
    out = []
    for h in range(HKV):
        s = (q[h*G:(h+1)*G].to(BF).float() @ K[h].T) * SCALE
        for gi in range(G):
            out.append(rounds(s[gi]))
    out.sort(key=lambda r: -r[1])
    print(w, n, "dense: (rounds, survivors, final |S|) for the 6 heads with most survivors:", out[:6],
          "max rounds", max(r[0] for r in out))
