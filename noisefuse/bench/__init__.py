"""The step-time benchmark behind ``make bench`` (``python -m noisefuse.bench``).

One module per concern: ``presets`` (parameter shapes), ``bytes_model`` (traffic per step),
``baselines`` (what is compared, and which backends work here), ``timing`` and ``profiling`` (how it
is measured), ``runner`` (the measurement loop), ``report`` and ``plots`` (the outputs), ``noise``
and ``noise_report`` (the gradient-noise section and its tables). Nothing
here is imported by ``import noisefuse``; tqdm and matplotlib are imported only when used.
"""
