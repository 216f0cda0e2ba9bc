"""The pytest-benchmark suite behind `qdeploy bench` (collected only by reference.bench).

One test per (round, runtime, batch); the plugin in reference.bench parametrizes it
round-major so every runtime is measured once per round, interleaved.
"""


def test_throughput(benchmark, bench_case, request):
    fn = request.config._bench_fns[(bench_case[1], bench_case[2])]
    benchmark.group = f"batch {bench_case[2]}"
    benchmark.pedantic(fn, rounds=15, iterations=1, warmup_rounds=2)
