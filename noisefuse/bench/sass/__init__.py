"""``python -m noisefuse.bench.sass`` (``make sass-report``): a static report of the machine code of
noisefuse's CUDA kernels beside torch's fused AdamW / AdamW-amsgrad / SGD kernels, and an ESTIMATE of
whether each is bandwidth-bound on an H100 / H200, from the SASS alone (no GPU needed).

One module per concern: ``tools`` (finding or installing cuobjdump and nvdisasm), ``extract`` (the
cubins, resource usage and SASS text of each kernel, cached under ``build/sass-cache/``), ``variants``
(demangled names decoded into template parameters), ``parse`` (SASS lines, instruction classes, the
hot loop), ``model`` (occupancy and the issue-rate vs bandwidth estimate) and ``report`` (rows, the
terminal table, results.json and the README tables). docs/backends/native.md, "Reading the machine
code: the static SASS report", says how to read it and what it cannot see.
"""
