"""web/src/links.js against mlcpatch.links: same files, same inputs, same outputs as both the
loop's numpy links and the trainer's PyTorch links, and the same errors for the same bad files.

Tolerance: |js - python| <= 1e-5 + 1e-5·|python| elementwise. links.js computes in float64 and
rounds once, numpy and PyTorch in float32, so the gap is float32 rounding (observed ~1e-7
relative).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
import torch

from mlcpatch.links.binary import write_binary
from mlcpatch.links.files import load_links
from mlcpatch.links.forward import Link
from mlcpatch.links.linkfile import AgentInfo, LinkFileError
from mlcpatch.links.recursivelink import write_json
from mlcpatch.links.spec import make_spec
from mlcpatch.links.torch_module import LinkSet

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINKS_JS = ROOT / "web" / "src" / "links.js"
RTOL = ATOL = 1e-5

DRIVER = """
import { readFileSync, writeFileSync } from "node:fs";
import { linksFromBinary, linksFromJson } from "%s";

const [kind, path, inputPath, outputPath] = process.argv.slice(2);
let result;
try {
  let links;
  if (kind === "binary") {
    const manifest = JSON.parse(readFileSync(path + "/links.json", "utf8"));
    const weights = readFileSync(path + "/links.safetensors");
    links = linksFromBinary(manifest, weights, path + "/links.json");
  } else {
    links = linksFromJson(JSON.parse(readFileSync(path, "utf8")), path);
  }
  const inputs = JSON.parse(readFileSync(inputPath, "utf8"));
  result = { outputs: {} };
  for (const [name, rows] of Object.entries(inputs)) {
    const link = links.get(name);
    const out = link.applyRows(Float32Array.from(rows.flat()), rows.length);
    result.outputs[name] = Array.from(out);
  }
} catch (err) {
  result = { error: err.message, type: err.name };
}
writeFileSync(outputPath, JSON.stringify(result));
"""


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    assert shutil.which("node"), "Node.js is not installed: apt-get install -y nodejs"
    path = tmp_path_factory.mktemp("js") / "driver.mjs"
    path.write_text(DRIVER % LINKS_JS.as_uri())
    return path


def run_js(driver: pathlib.Path, kind: str, path: pathlib.Path, inputs: dict) -> dict:
    input_path = path.parent / "inputs.json"
    output_path = path.parent / "outputs.json"
    input_path.write_text(json.dumps(inputs))
    subprocess.run(
        ["node", str(driver), kind, str(path), str(input_path), str(output_path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return json.loads(output_path.read_text())


def random_links(variant: str, activation: str) -> LinkSet:
    specs = [
        make_spec("inner", "a", "a", 32, 32, variant, 24, activation),
        make_spec("inner", "b", "b", 48, 48, variant, None, activation),
        make_spec("outer", "a", "b", 32, 48, variant, 40, activation),
        make_spec("outer", "b", "a", 48, 32, variant, None, activation),
    ]
    links = LinkSet(specs, [AgentInfo("a", 32), AgentInfo("b", 48)])
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in links.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.4)
    return links


@pytest.mark.parametrize("variant", ["residual", "ln-residual"])
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
@pytest.mark.parametrize("fmt", ["json", "binary-f32", "binary-f16"])
def test_js_matches_pytorch(
    driver: pathlib.Path, tmp_path: pathlib.Path, variant: str, activation: str, fmt: str
) -> None:
    original = random_links(variant, activation)
    if fmt == "json":
        path = write_json(original.to_file(), tmp_path / "recursivelink.json")
        kind = "json"
    else:
        path = tmp_path / "links"
        write_binary(original.to_file(), path, dtype=fmt.split("-")[1])
        kind = "binary"
    # Python runs the weights as stored (f16-rounded for binary-f16), exactly like JS does.
    link_file = load_links(path)
    torch_links = LinkSet.from_file(link_file)
    rng = np.random.default_rng(7)
    # Rows at several scales: small ones (embedding-sized) make LayerNorm's epsilon matter.
    scales = np.array([[2.0], [2.0], [0.3], [0.05], [0.02], [0.005]])
    inputs = {
        name: (rng.normal(size=(6, torch_links.specs[name].in_dim)) * scales).astype(np.float32)
        for name in torch_links.names()
    }
    result = run_js(driver, kind, path, {k: v.tolist() for k, v in inputs.items()})
    assert "error" not in result, result
    for name, rows in inputs.items():
        with torch.no_grad():
            expected = torch_links[name](torch.from_numpy(rows)).numpy()
        got = np.asarray(result["outputs"][name], dtype=np.float32).reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=name)
        loop_side = Link.from_file(link_file, name)(rows)
        np.testing.assert_allclose(got, loop_side, rtol=RTOL, atol=ATOL, err_msg=name)


def test_js_reports_the_same_shape_error(driver: pathlib.Path, tmp_path: pathlib.Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "links"
    link_file = random_links("ln-residual", "gelu").to_file()
    write_binary(link_file, path)
    link_file.tensors["outer_a_to_b.w3"] = np.zeros((48, 31), np.float32)
    save_file(link_file.tensors, str(path / "links.safetensors"))
    with pytest.raises(LinkFileError) as err:
        load_links(path)
    result = run_js(driver, "binary", path, {})
    assert result["type"] == "LinkError"
    assert result["error"] == str(err.value)


def test_js_refuses_legacy_normalised_links(driver: pathlib.Path, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"hidden": 2, "norm": True, "links": []}))
    with pytest.raises(LinkFileError) as err:
        load_links(path)
    result = run_js(driver, "json", path, {})
    assert result["error"] == str(err.value)
