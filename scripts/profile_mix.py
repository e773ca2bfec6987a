"""Where the time of one CPU ``VisualMixer.mix`` call goes: the keyed PRF stream, the compiled kernel, the rest.

    FL_VMIX_DATA=../shared/data python scripts/profile_mix.py [--repeats 40]

The default mixer (region 8, blocks 2/1, target 3x) on 512 images, synthetic (as in ``bench_vmix.py``) and real
CIFAR-10 test images when they are in the data root, on 1 and 2 threads. Fresh sample ids every call; medians
of ``--repeats`` calls after one warm-up call. The PRF stream is timed on its own (the same call ``mix``
makes); the kernel inside ``mix`` by wrapping :func:`fl_vmix.privacy._kernels.mix_kernel`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from bench_vmix import BENCH_KEY, hardware, photo_like, real_cifar10  # beside this script

import fl_vmix.privacy._kernels as kernels
from fl_vmix.privacy import VisualMixer


def median_ms(fn: Callable[[int], object], repeats: int) -> float:
    fn(0)
    times = []
    for i in range(1, repeats + 1):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    images = {"synthetic": photo_like(512, 32)}
    cifar = real_cifar10(512)
    if cifar is not None:
        images["cifar10"] = cifar
    mixer = VisualMixer(BENCH_KEY, region_size=8, block_sizes=(2, 1), target_ratio=3.0)  # the default
    ids = torch.arange(512)
    layout = mixer._layout(32, 32, 3, torch.device("cpu"))
    kernel_times: list[float] = []
    compiled = kernels.mix_kernel

    def timed_kernel(*arguments: object) -> object:
        start = time.perf_counter()
        result = compiled(*arguments)
        kernel_times.append(time.perf_counter() - start)
        return result

    kernels.mix_kernel = timed_kernel  # mix() looks the kernel up at call time
    print(f"{hardware(torch.device('cpu'))}; 512 images, 3x32x32, median of {args.repeats} calls (ms)")
    print("threads  images     prf  kernel   rest   total  img/s")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        prf = median_ms(lambda i: layout.prf.words(ids + 512 * i, 0, layout.geometry.words_per_sample), args.repeats)
        for name, batch in images.items():
            kernel_times.clear()
            total = median_ms(lambda i, batch=batch: mixer(batch, ids + 512 * i), args.repeats)
            kernel = 1e3 * statistics.median(kernel_times[1:])
            rest = total - kernel - prf
            print(f"{threads:7d}  {name:9s} {prf:5.2f}  {kernel:6.2f}  {rest:5.2f}  {total:6.2f}  {512e3 / total:,.0f}")


if __name__ == "__main__":
    main()
