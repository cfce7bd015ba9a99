"""``mlcpatch build --backend mlc``: the artifact folder built by an installed MLC-LLM
(``pipeline.build_mlc``)."""
