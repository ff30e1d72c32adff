"""``python -m bench.decode`` as a real subprocess: both norms decode the same pixels, and the
ratio line is printed. No timing is asserted (the machine is shared)."""

import re

from tests.support import run_cli


def test_bench_decode_prints_the_ratio_of_two_norms_that_decode_the_same_pixels():
    proc = run_cli("bench.decode", "--model", "toy", "--videos", "2", "--batch", "1", "--repeats", "1",
                   "--size", "4", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    head = re.search(r"model toy: (\d+) RMS norms, 2 videos, latents \[4, 3, 4, 4\], batch 1", proc.stdout)
    assert head and int(head.group(1)) > 0, proc.stdout
    stock = float(re.search(r"stock F.normalize +([0-9.]+) s", proc.stdout).group(1))
    fast = float(re.search(r"sum of squares +([0-9.]+) s", proc.stdout).group(1))
    ratio, diff = re.search(r"ratio \(stock / sum of squares\) ([0-9.]+); largest pixel difference (\S+)",
                            proc.stdout).groups()
    assert stock > 0 and fast > 0
    # the printed times are rounded to 0.1 ms, the ratio to 0.01
    rounding = stock / fast * (0.00005 / stock + 0.00005 / fast) + 0.005
    assert abs(float(ratio) - stock / fast) <= rounding + 1e-9
    # float rounding of the same arithmetic (measured 6e-7 on the toy VAE); a wrong norm is >= 1e-2
    assert float(diff) < 1e-4
