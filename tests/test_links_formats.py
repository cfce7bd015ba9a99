"""Link files: export -> load gives identical outputs, both formats, both variants; bad files fail
with messages that name the link, the tensor and the shapes."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import save_file

from mlcpatch.links.binary import read_binary, write_binary
from mlcpatch.links.files import convert_links, load_links, save_links
from mlcpatch.links.linkfile import AgentInfo, LinkFile, LinkFileError
from mlcpatch.links.recursivelink import read_json, write_json
from mlcpatch.links.spec import make_spec
from mlcpatch.links.torch_module import LinkSet
from mlcpatch.training.command import links_command


def random_link_set(variant: str, activation: str = "gelu", seed: int = 0) -> LinkSet:
    """Heterogeneous agents (32 and 48 wide) with every parameter random, biases included."""
    specs = [
        make_spec("inner", "a", "a", 32, 32, variant, 24, activation),
        make_spec("inner", "b", "b", 48, 48, variant, None, activation),
        make_spec("outer", "a", "b", 32, 48, variant, 40, activation),
        make_spec("outer", "b", "a", 48, 32, variant, None, activation),
    ]
    link_set = LinkSet(specs, [AgentInfo("a", 32, "tiny:qwen2"), AgentInfo("b", 48, "tiny:llama")])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in link_set.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return link_set


def outputs(link_set: LinkSet, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    result = {}
    with torch.no_grad():
        for name in link_set.names():
            spec = link_set.specs[name]
            result[name] = link_set[name](torch.randn(5, spec.in_dim, generator=generator))
    return result


@pytest.mark.parametrize("variant", ["residual", "ln-residual"])
@pytest.mark.parametrize("fmt", ["json", "binary"])
def test_export_load_identical_outputs(tmp_path: pathlib.Path, variant: str, fmt: str) -> None:
    original = random_link_set(variant)
    target = tmp_path / ("recursivelink.json" if fmt == "json" else "links")
    save_links(original.to_file(), target, fmt=fmt)
    loaded_file = load_links(target)
    assert [s.name for s in loaded_file.links] == original.names()
    assert loaded_file.agents == original.agents
    loaded = LinkSet.from_file(loaded_file)
    before, after = outputs(original), outputs(loaded)
    for name in before:
        assert torch.equal(before[name], after[name]), name


@pytest.mark.parametrize("variant", ["residual", "ln-residual"])
def test_json_binary_round_trip_is_exact(tmp_path: pathlib.Path, variant: str) -> None:
    link_file = random_link_set(variant, activation="gelu_tanh").to_file()
    write_json(link_file, tmp_path / "a.json")
    convert_links(tmp_path / "a.json", tmp_path / "bin")
    convert_links(tmp_path / "bin", tmp_path / "b.json")
    again = read_json(tmp_path / "b.json")
    assert again.links == link_file.links
    assert set(again.tensors) == set(link_file.tensors)
    for key, value in link_file.tensors.items():
        assert np.array_equal(again.tensors[key], value), key


def test_f16_binary_rounds_to_half(tmp_path: pathlib.Path) -> None:
    link_file = random_link_set("residual").to_file()
    write_binary(link_file, tmp_path / "half.safetensors", dtype="f16")
    loaded = read_binary(tmp_path / "half.safetensors")
    for key, value in link_file.tensors.items():
        assert np.array_equal(loaded.tensors[key], value.astype(np.float16).astype(np.float32))
    assert (tmp_path / "half.json").is_file()


def test_lone_safetensors_carries_its_manifest(tmp_path: pathlib.Path) -> None:
    link_file = random_link_set("ln-residual").to_file()
    write_binary(link_file, tmp_path / "links")
    (tmp_path / "links" / "links.json").unlink()
    loaded = load_links(tmp_path / "links" / "links.safetensors")
    assert loaded.links == link_file.links


def test_binary_files_are_readable_by_others_and_written_whole(tmp_path: pathlib.Path) -> None:
    import os

    link_file = random_link_set("residual").to_file()
    old = os.umask(0o022)
    try:
        write_binary(link_file, tmp_path / "links")
    finally:
        os.umask(old)
    names = sorted(p.name for p in (tmp_path / "links").iterdir())
    assert names == ["links.json", "links.safetensors"]  # no temporary file left behind
    for name in names:
        assert (tmp_path / "links" / name).stat().st_mode & 0o777 == 0o644, name


def test_inner_links_omit_w3_and_keep_old_top_level(tmp_path: pathlib.Path) -> None:
    write_json(random_link_set("residual").to_file(), tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["hidden"] == 32 and data["norm"] is False and data["gelu"] == "erf"
    inner, outer = data["links"][0], data["links"][2]
    assert "w3" not in inner and inner["kind"] == "inner"
    assert np.asarray(outer["w3"]).shape == (48, 32)
    assert {"w1", "b1", "w2", "b2"} <= set(inner)
    assert np.asarray(inner["w1"]).shape == (24, 32)  # row-major [out, in] nested lists


def test_legacy_recursivelink_json_is_read(tmp_path: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    legacy = {
        "hidden": 8,
        "gelu": "tanh",
        "links": [
            {
                "w1": rng.normal(size=(4, 8)).tolist(),
                "b1": rng.normal(size=4).tolist(),
                "w2": rng.normal(size=(8, 4)).tolist(),
                "b2": rng.normal(size=8).tolist(),
            }
        ],
    }
    (tmp_path / "old.json").write_text(json.dumps(legacy))
    loaded = load_links(tmp_path / "old.json")
    spec = loaded.links[0]
    assert (spec.name, spec.kind, spec.variant, spec.activation) == (
        "link0",
        "inner",
        "residual",
        "gelu_tanh",
    )
    h = rng.normal(size=8).astype(np.float32)
    z = np.asarray(legacy["links"][0]["w1"]) @ h + legacy["links"][0]["b1"]
    gelu = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
    expected = h + np.asarray(legacy["links"][0]["w2"]) @ gelu + legacy["links"][0]["b2"]
    got = LinkSet.from_file(loaded)["link0"](torch.from_numpy(h)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# -- errors -------------------------------------------------------------------------------------


def _binary(tmp_path: pathlib.Path) -> tuple[pathlib.Path, dict, dict[str, np.ndarray]]:
    write_binary(random_link_set("ln-residual").to_file(), tmp_path / "l")
    manifest = json.loads((tmp_path / "l" / "links.json").read_text())
    tensors = read_binary(tmp_path / "l").tensors
    return tmp_path / "l", manifest, tensors


def _rewrite(folder: pathlib.Path, manifest: dict, tensors: dict[str, np.ndarray]) -> None:
    (folder / "links.json").write_text(json.dumps(manifest))
    save_file(tensors, str(folder / "links.safetensors"))


def test_wrong_shape_names_link_tensor_and_shapes(tmp_path: pathlib.Path) -> None:
    folder, manifest, tensors = _binary(tmp_path)
    tensors["outer_a_to_b.w3"] = np.zeros((48, 31), np.float32)
    _rewrite(folder, manifest, tensors)
    with pytest.raises(LinkFileError) as err:
        load_links(folder)
    assert "link 'outer_a_to_b' tensor 'outer_a_to_b.w3' has shape [48, 31], expected [48, 32]" in (
        str(err.value)
    )


def test_missing_tensor_and_missing_field(tmp_path: pathlib.Path) -> None:
    folder, manifest, tensors = _binary(tmp_path)
    del tensors["inner_b.ln_out.bias"]
    _rewrite(folder, manifest, tensors)
    with pytest.raises(
        LinkFileError,
        match=r"link 'inner_b' \(ln-residual, inner\) is missing "
        r"tensor 'inner_b.ln_out.bias' \(expected shape \[48\]\)",
    ):
        load_links(folder)
    folder, manifest, tensors = _binary(tmp_path / "2")
    del manifest["links"][1]["out_dim"]
    _rewrite(folder, manifest, tensors)
    with pytest.raises(LinkFileError, match=r"link 'inner_b' is missing field 'out_dim'"):
        load_links(folder)


def test_extra_tensor_bad_version_and_agent_mismatch(tmp_path: pathlib.Path) -> None:
    folder, manifest, tensors = _binary(tmp_path)
    tensors["ghost.w1"] = np.zeros((2, 2), np.float32)
    _rewrite(folder, manifest, tensors)
    with pytest.raises(LinkFileError, match=r"tensor 'ghost.w1' belongs to no link"):
        load_links(folder)
    folder, manifest, tensors = _binary(tmp_path / "2")
    manifest["format"] = 7
    _rewrite(folder, manifest, tensors)
    with pytest.raises(LinkFileError, match=r"'format' is 7, this reader knows 1"):
        load_links(folder)
    folder, manifest, tensors = _binary(tmp_path / "3")
    manifest["agents"][1]["hidden_size"] = 64
    _rewrite(folder, manifest, tensors)
    with pytest.raises(
        LinkFileError,
        match=r"link 'inner_b' has in_dim=48 but agent 'b' has hidden size 64 in its agents list",
    ):
        load_links(folder)


def test_links_checked_against_models(tmp_path: pathlib.Path) -> None:
    link_file = random_link_set("residual").to_file()
    with pytest.raises(
        LinkFileError,
        match=r"link 'inner_b' has in_dim=48 but agent 'b' has hidden size 64 in this system",
    ):
        link_file.check_models({"a": 32, "b": 64})
    with pytest.raises(LinkFileError, match=r"agent 'b' is not in this system"):
        link_file.check_models({"a": 32})
    link_file.check_models({"a": 32, "b": 48})


def test_bf16_and_truncated_safetensors(tmp_path: pathlib.Path) -> None:
    from safetensors.torch import save_file as save_torch

    folder, manifest, _ = _binary(tmp_path)
    save_torch(
        {"inner_a.w1": torch.zeros(2, 2, dtype=torch.bfloat16)}, str(folder / "links.safetensors")
    )
    with pytest.raises(LinkFileError, match=r"tensor 'inner_a.w1' has dtype BF16, expected F16 or"):
        load_links(folder)
    (folder / "links.safetensors").write_bytes(b"\xff" * 12)
    with pytest.raises(LinkFileError, match=r"header length \d+ runs past the end"):
        load_links(folder)


def test_json_errors(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "r.json"
    write_json(random_link_set("residual").to_file(), path)
    data = json.loads(path.read_text())
    data["links"][0]["w1"] = [[1.0, 2.0], [3.0]]
    path.write_text(json.dumps(data))
    with pytest.raises(LinkFileError, match=r"link 'inner_a' tensor 'w1' is not a rectangular"):
        load_links(path)
    path.write_text(json.dumps({"hidden": 4, "norm": True, "links": []}))
    with pytest.raises(LinkFileError, match=r"'norm': true .* cannot be expressed"):
        load_links(path)
    path.write_text("{not json")
    with pytest.raises(LinkFileError, match=r"r.json: not valid JSON"):
        load_links(path)


def test_loading_into_a_system_with_other_shapes_fails() -> None:
    small = random_link_set("residual")
    other = LinkSet([make_spec("inner", "a", "a", 32, 32, "residual", 16)])
    with pytest.raises(LinkFileError, match=r"link 'inner_a': the file has residual/gelu"):
        other.load_file(small.to_file())


# -- the command line ---------------------------------------------------------------------------


def test_convert_and_inspect_commands(tmp_path: pathlib.Path) -> None:
    link_file = random_link_set("ln-residual").to_file()
    write_json(link_file, tmp_path / "recursivelink.json")
    runner = CliRunner()
    result = runner.invoke(
        links_command, ["convert", str(tmp_path / "recursivelink.json"), str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "links.safetensors").is_file()
    result = runner.invoke(links_command, ["inspect", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "outer_b_to_a: outer b->a ln-residual 48->32 hidden 64 gelu" in result.output
    back = tmp_path / "back.json"
    result = runner.invoke(links_command, ["convert", str(tmp_path / "out"), str(back)])
    assert result.exit_code == 0, result.output
    assert read_json(back).links == link_file.links


def test_convert_error_is_one_line(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"links": [{"name": "x", "kind": "inner"}]}))
    result = CliRunner().invoke(links_command, ["convert", str(bad), str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [f"Error: {bad}: link 'x' is missing field 'from'"]


def test_link_file_validate_rejects_duplicates() -> None:
    spec = make_spec("inner", "a", "a", 4, 4, "residual", 2)
    tensors = {f"inner_a.{k}": np.zeros(s, np.float32) for k, s in spec.param_shapes().items()}
    with pytest.raises(LinkFileError, match=r"link 'inner_a' is listed twice"):
        LinkFile([], [spec, spec], tensors).validate("x")


# -- hostile files: one-line errors from `mlcpatch links convert` -------------------------------


def _convert_error(source: pathlib.Path, target: pathlib.Path) -> str:
    """Run the real CLI; the run must fail with exactly one 'Error: ...' line, no traceback."""
    from mlcpatch.cli import main

    result = CliRunner().invoke(main, ["links", "convert", str(source), str(target)])
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def _set_safetensors_header(path: pathlib.Path, change) -> None:  # type: ignore[no-untyped-def]
    import struct

    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    change(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size :])


def _hostile(tmp_path: pathlib.Path, case: str) -> tuple[pathlib.Path, pathlib.Path, str]:
    """(path to convert, file the error must name, text the error must contain)."""
    folder = tmp_path / "l"
    write_binary(random_link_set("residual").to_file(), folder)
    manifest_path, weights = folder / "links.json", folder / "links.safetensors"
    manifest = json.loads(manifest_path.read_text())
    if case == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
        return folder, weights, "(truncated?)"
    if case == "hidden_size_abc":
        manifest["agents"][1]["hidden_size"] = "abc"
        manifest_path.write_text(json.dumps(manifest))
        return folder, manifest_path, "agents[1]: hidden_size 'abc' is not a positive integer"
    if case == "deep_json":
        deep = tmp_path / "deep.json"
        deep.write_text("[" * 100_000 + "]" * 100_000)
        return deep, deep, "not valid JSON (nested too deeply)"
    if case == "deep_manifest":
        manifest_path.write_text('{"format": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
        return folder, manifest_path, "not valid JSON (nested too deeply)"
    if case == "metadata_list":
        manifest_path.unlink()
        _set_safetensors_header(weights, lambda h: h.update({"__metadata__": ["x"]}))
        return weights, weights, "'__metadata__' is not a JSON object"
    if case == "bad_embedded_manifest":
        manifest_path.unlink()
        _set_safetensors_header(
            weights, lambda h: h.update({"__metadata__": {"links_manifest": "{nope"}})
        )
        return weights, weights, "embedded manifest: not valid JSON"
    if case == "bad_embedded_agents":
        manifest_path.unlink()
        embedded = dict(manifest, agents=[{"name": "a", "hidden_size": [32]}])
        _set_safetensors_header(
            weights, lambda h: h.update({"__metadata__": {"links_manifest": json.dumps(embedded)}})
        )
        return weights, weights, "hidden_size [32] is not a positive integer"
    outside = tmp_path / "elsewhere"
    write_binary(random_link_set("residual").to_file(), outside)
    if case == "absolute_weights":
        manifest["weights"] = str(outside / "links.safetensors")
        message = "must be a relative path inside the manifest's folder"
    elif case == "escaping_weights":
        manifest["weights"] = "../elsewhere/links.safetensors"
        message = "must be a relative path inside the manifest's folder"
    else:
        assert case == "symlinked_weights"
        (folder / "w.safetensors").symlink_to(outside / "links.safetensors")
        manifest["weights"] = "w.safetensors"
        message = "leads outside the manifest's folder"
    manifest_path.write_text(json.dumps(manifest))
    return folder, manifest_path, message


@pytest.mark.parametrize(
    "case",
    [
        "truncated",
        "hidden_size_abc",
        "deep_json",
        "deep_manifest",
        "metadata_list",
        "bad_embedded_manifest",
        "bad_embedded_agents",
        "absolute_weights",
        "escaping_weights",
        "symlinked_weights",
    ],
)
def test_hostile_link_files_give_one_line_errors(tmp_path: pathlib.Path, case: str) -> None:
    source, named, message = _hostile(tmp_path, case)
    line = _convert_error(source, tmp_path / "out.json")
    assert f"Error: {named}" in line and message in line, line
    assert not (tmp_path / "out.json").exists()


def test_weights_in_a_subfolder_are_allowed(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "l"
    link_file = random_link_set("residual").to_file()
    write_binary(link_file, folder)
    (folder / "sub").mkdir()
    (folder / "links.safetensors").rename(folder / "sub" / "w.safetensors")
    manifest = json.loads((folder / "links.json").read_text())
    manifest["weights"] = "sub/w.safetensors"
    (folder / "links.json").write_text(json.dumps(manifest))
    assert load_links(folder).links == link_file.links


def test_header_length_over_the_cap_is_refused_without_reading_the_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import struct

    from mlcpatch.links.binary import MAX_HEADER_BYTES

    def no_whole_file_reads(self: pathlib.Path) -> bytes:
        raise AssertionError(f"read the whole of {self}")

    monkeypatch.setattr(pathlib.Path, "read_bytes", no_whole_file_reads)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    line = _convert_error(tiny, tmp_path / "out.json")
    assert f"{tiny}: header length 1000000000000 runs past the end of the file" in line, line
    # A (sparse) file big enough to hold a header over the cap: refused from the length alone.
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as f:
        f.write(struct.pack("<Q", MAX_HEADER_BYTES + 1))
        f.truncate(MAX_HEADER_BYTES + 64)
    line = _convert_error(big, tmp_path / "out.json")
    assert (
        f"{big}: safetensors header length {MAX_HEADER_BYTES + 1} is over the "
        f"{MAX_HEADER_BYTES} byte limit" in line
    ), line


def test_convert_to_an_unwritable_target_is_one_line(tmp_path: pathlib.Path) -> None:
    write_json(random_link_set("residual").to_file(), tmp_path / "r.json")
    (tmp_path / "file").write_text("x")
    line = _convert_error(tmp_path / "r.json", tmp_path / "file" / "out")
    assert str(tmp_path / "file") in line


def test_publish_refuses_hostile_safetensors_headers(tmp_path: pathlib.Path) -> None:
    import struct

    from mlcpatch.publish.errors import ArtifactError
    from mlcpatch.publish.links import collect_links

    for name, header in (
        ("list", b"[1, 2]"),
        ("deep", b"[" * 100_000 + b"]" * 100_000),
        ("offsets", b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}}'),
    ):
        path = tmp_path / name / "links.safetensors"
        path.parent.mkdir()
        path.write_bytes(struct.pack("<Q", len(header)) + header)
        with pytest.raises(ArtifactError, match="not a safetensors file|lies outside the file"):
            collect_links([path])
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match=r"nested too deeply"):
        collect_links([deep])
