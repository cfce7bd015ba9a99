// The built-in patterns (web/data/patterns.json, exported from mlcpatch/loop/patterns/*.toml by
// mlcpatch/loop/web_assets.py) and the one helper the loop needs from mlcpatch/loop/patterns.py.

/** Every (sender, receiver) pair, in run order of the receiver. */
export function handoffs(pattern) {
  return pattern.agents.flatMap((a) => a.receives.map((s) => [s, a.name]));
}

/** name -> pattern ({name, description, agents: [{name, system, template, receives, tools}]}). */
export async function loadPatterns(url = new URL("../data/patterns.json", import.meta.url)) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot load the built-in patterns (${url}): HTTP ${response.status}`);
  const data = await response.json();
  if (data.format !== 1) throw new Error(`${url}: unknown patterns format ${data.format}`);
  return new Map(data.patterns.map((p) => [p.name, p]));
}
