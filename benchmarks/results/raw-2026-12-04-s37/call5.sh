source .scratch/setup.sh
# where the threshold search program's time goes: ncu's warp-state sampling per SASS instruction of
# _search_kernel (B = 1, boxed TopK 6.25%, 128K), the top instructions by stall samples
cd benchmarks
ncu --version | tail -1
timeout 200 ncu --kernel-name regex:"_search_kernel" --launch-skip 2 --launch-count 1 --set full --import-source yes \
  -o "$OUT/search" python3 ncu_step.py 1.5:TopK6.25 131072 stream --page-boxes > "$OUT/ncu.log" 2>&1
echo ncu rc=$?; tail -2 "$OUT/ncu.log"
ncu --import "$OUT/search.ncu-rep" --page source --csv --print-source sass > "$OUT/source.csv" 2> "$OUT/source.err" \
  || ncu --import "$OUT/search.ncu-rep" --page source --csv > "$OUT/source.csv" 2>> "$OUT/source.err"
tail -2 "$OUT/source.err"; wc -l "$OUT/source.csv"
ncu --import "$OUT/search.ncu-rep" --page details --csv > "$OUT/details.csv" 2>/dev/null
python3 - "$OUT/source.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
head = next(i for i, r in enumerate(rows) if any("Source" in c for c in r))
cols = rows[head]; body = [r for r in rows[head + 1:] if len(r) == len(cols)]
print("columns:", [c for c in cols][:30])
key = next((i for i, c in enumerate(cols) if "Warp Stall Sampling (All" in c), None)
src = next(i for i, c in enumerate(cols) if c.strip() == "Source")
if key is None:
    sys.exit("no stall-sampling column")
def num(x):
    try: return float(x.replace(",", ""))
    except ValueError: return 0.0
total = sum(num(r[key]) for r in body)
print("instructions", len(body), "stall samples", total)
reasons = [i for i, c in enumerate(cols) if c.startswith("stall_") or "Stall" in c and i != key]
for r in sorted(body, key=lambda r: -num(r[key]))[:45]:
    print(f"{num(r[key]) / total * 100:5.1f}%  {r[src][:90]}")
PY
