"""Per-worker training: the one loop (`loop`), its DeepSpeed engine (`engine`), schedules, and where a trial runs
(`launch`). The objective math it trains with is `crossover.models.objectives`."""
