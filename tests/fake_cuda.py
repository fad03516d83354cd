"""A stand-in for the CUDA timing and memory calls of the benchmarks: work is queued and done at the
next synchronize, and the allocator keeps its peak until reset_peak_memory_stats."""


class QueuedClock:
    """perf_counter and torch.cuda.synchronize of a GPU, or of a CPU (``queued=False``: work is done when
    it is run)."""

    def __init__(self, queued=True):
        self.now = self.queued = 0.0
        self.queues = queued

    def perf_counter(self):
        return self.now

    def synchronize(self, device=None):
        self.now, self.queued = self.now + self.queued, 0.0

    def run(self, seconds):
        if self.queues:
            self.queued += seconds
        else:
            self.now += seconds


class FakeGpu(QueuedClock):
    """The clock with the allocator's counters: ``resident`` bytes (the model's parameters) stay allocated."""

    def __init__(self, resident):
        super().__init__()
        self.live = self.peak = resident

    def empty_cache(self):
        pass

    def reset_peak_memory_stats(self, device=None):
        self.peak = self.live

    def memory_allocated(self, device=None):
        return self.live

    def max_memory_allocated(self, device=None):
        return self.peak

    def run(self, seconds, transient_bytes=0):
        super().run(seconds)
        self.peak = max(self.peak, self.live + transient_bytes)
