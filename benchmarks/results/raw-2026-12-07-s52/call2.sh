# Session 52, call 2 (the machine of call 1, still warm; 37 s): the gpu tests of the Gaussian path with
# gaussian_select.CHUNK = 256 (perf-log row 162), set in the carried copy of the tree before the run. Setup
# (the wheels in /tmp/site, the editable install of .scratch/clean) was call 1's.
cd .scratch/clean && sed -i 's/^CHUNK = 1024/CHUNK = 256/' kernels/gaussian_select.py && grep -n "^CHUNK" kernels/gaussian_select.py && export PYTHONPATH=/tmp/site && timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider -rf -n 14 -k "gaussian or Gaussian" tests/ 2>&1 | tail -3 | tee $OUT/tests-chunk256.txt
