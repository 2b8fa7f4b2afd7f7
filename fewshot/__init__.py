"""fewshot: metric-based few-shot learners built on the `episodes` sampler."""

__version__ = "0.1.0"
