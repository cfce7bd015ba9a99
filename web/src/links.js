// RecursiveLink forward passes on Float32Arrays, and loaders for both link file formats
// (links.safetensors + links.json, and recursivelink.json). No dependencies; browser or Node.
//
//   residual:     R(h) = W3·h + W2·σ(W1·h + b1) + b2            (W3 = identity for inner links)
//   ln-residual:  R(h) = LN_out(W3·h + W2·σ(W1·LN_in(h) + b1) + b2)
//
// Names, shapes and checks mirror mlcpatch/links/ (spec.py, linkfile.py), so a file that
// loads in Python loads here with the same meaning, and a bad one fails with the same message.
// Arithmetic is done in float64 and rounded to float32 once per output: outputs match PyTorch's
// float32 modules to about 1e-6 relative (the parity test allows 1e-5).

export const LN_EPS = 1e-5;
export const VARIANTS = ["residual", "ln-residual"];
export const KINDS = ["inner", "outer"];
export const ACTIVATIONS = ["gelu", "gelu_tanh"];
const NAME_RE = /^[A-Za-z0-9_-]+$/;
const FORMAT_VERSION = 1;

export class LinkError extends Error {
  constructor(message) {
    super(message);
    this.name = "LinkError";
  }
}

// -- activations ---------------------------------------------------------------------------

const SQRT_PI = Math.sqrt(Math.PI);

/** erf to ~1e-15: Maclaurin series near 0, Laplace continued fraction for erfc in the tails. */
export function erf(x) {
  const ax = Math.abs(x);
  if (ax < 3) {
    let term = ax;
    let sum = ax;
    const x2 = ax * ax;
    for (let n = 1; n < 80; n++) {
      term *= -x2 / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    const value = (2 / SQRT_PI) * sum;
    return x < 0 ? -value : value;
  }
  if (ax > 6.5) return x < 0 ? -1 : 1;
  let t = ax;
  for (let k = 60; k >= 1; k--) t = ax + k / 2 / t;
  const value = 1 - Math.exp(-ax * ax) / (SQRT_PI * t);
  return x < 0 ? -value : value;
}

export function gelu(x) {
  return 0.5 * x * (1 + erf(x / Math.SQRT2));
}

export function geluTanh(x) {
  const c = Math.sqrt(2 / Math.PI);
  return 0.5 * x * (1 + Math.tanh(c * (x + 0.044715 * x * x * x)));
}

// -- specs ---------------------------------------------------------------------------------

function checkName(name, what) {
  if (typeof name !== "string" || !NAME_RE.test(name)) {
    throw new LinkError(`${what} name ${JSON.stringify(name)} must match [A-Za-z0-9_-]+`);
  }
}

function positiveInt(value) {
  return Number.isInteger(value) && value > 0;
}

/** Validate link metadata; returns a normalised spec object. */
export function makeSpec(meta) {
  const spec = {
    name: meta.name,
    kind: meta.kind,
    from: meta.from,
    to: meta.to,
    variant: meta.variant,
    inDim: meta.in_dim,
    outDim: meta.out_dim,
    hidden: meta.hidden,
    activation: meta.activation ?? "gelu",
  };
  checkName(spec.name, "link");
  if (!KINDS.includes(spec.kind)) {
    throw new LinkError(`link ${spec.name}: kind '${spec.kind}' is not one of ${KINDS}`);
  }
  if (!VARIANTS.includes(spec.variant)) {
    throw new LinkError(`link ${spec.name}: variant '${spec.variant}' is not one of ${VARIANTS}`);
  }
  if (!ACTIVATIONS.includes(spec.activation)) {
    throw new LinkError(
      `link ${spec.name}: activation '${spec.activation}' is not one of ${ACTIVATIONS}`,
    );
  }
  for (const [field, value] of [["in_dim", spec.inDim], ["out_dim", spec.outDim], ["hidden", spec.hidden]]) {
    if (!positiveInt(value)) throw new LinkError(`link ${spec.name}: ${field} must be a positive integer`);
  }
  if (spec.kind === "inner" && spec.inDim !== spec.outDim) {
    throw new LinkError(
      `link ${spec.name}: an inner link maps a space onto itself, but in_dim=${spec.inDim} and out_dim=${spec.outDim}`,
    );
  }
  return spec;
}

/** Parameter name -> shape, in the order of the file formats. */
export function paramShapes(spec) {
  const shapes = {
    w1: [spec.hidden, spec.inDim],
    b1: [spec.hidden],
    w2: [spec.outDim, spec.hidden],
    b2: [spec.outDim],
  };
  if (spec.kind === "outer") shapes.w3 = [spec.outDim, spec.inDim];
  if (spec.variant === "ln-residual") {
    shapes["ln_in.weight"] = [spec.inDim];
    shapes["ln_in.bias"] = [spec.inDim];
    shapes["ln_out.weight"] = [spec.outDim];
    shapes["ln_out.bias"] = [spec.outDim];
  }
  return shapes;
}

const shapeText = (shape) => `[${shape.join(", ")}]`;

// -- the forward pass ----------------------------------------------------------------------

function layerNorm(x, weight, bias) {
  const n = x.length;
  let mean = 0;
  for (let i = 0; i < n; i++) mean += x[i];
  mean /= n;
  let variance = 0;
  for (let i = 0; i < n; i++) variance += (x[i] - mean) * (x[i] - mean);
  variance /= n;
  const inv = 1 / Math.sqrt(variance + LN_EPS);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = (x[i] - mean) * inv * weight[i] + bias[i];
  return out;
}

// out[r] = Σ_c W[r, c]·x[c] (+ b[r]); W row-major [rows, cols].
function matVec(w, rows, cols, x, b) {
  const out = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let sum = b ? b[r] : 0;
    const base = r * cols;
    for (let c = 0; c < cols; c++) sum += w[base + c] * x[c];
    out[r] = sum;
  }
  return out;
}

export class Link {
  /**
   * @param {object} spec from makeSpec
   * @param {Record<string, Float32Array>} params flat row-major arrays named as in the files
   * @param {string} source where the link came from, for error messages
   */
  constructor(spec, params, source = "link") {
    this.spec = spec;
    const expected = paramShapes(spec);
    for (const [param, shape] of Object.entries(expected)) {
      const key = `${spec.name}.${param}`;
      const entry = params[param];
      if (entry === undefined) {
        throw new LinkError(
          `${source}: link '${spec.name}' (${spec.variant}, ${spec.kind}) is missing tensor '${key}' (expected shape ${shapeText(shape)})`,
        );
      }
      const actual = entry.shape ?? [entry.data.length];
      if (actual.length !== shape.length || actual.some((d, i) => d !== shape[i])) {
        throw new LinkError(
          `${source}: link '${spec.name}' tensor '${key}' has shape ${shapeText(actual)}, expected ${shapeText(shape)} (in_dim=${spec.inDim}, out_dim=${spec.outDim}, hidden=${spec.hidden})`,
        );
      }
      for (let i = 0; i < entry.data.length; i++) {
        if (!Number.isFinite(entry.data[i])) {
          throw new LinkError(`${source}: tensor '${key}' contains NaN or infinity`);
        }
      }
    }
    const extra = Object.keys(params).filter((p) => !(p in expected));
    if (extra.length) {
      throw new LinkError(`${source}: tensor '${spec.name}.${extra[0]}' belongs to no link in the manifest`);
    }
    this.p = Object.fromEntries(Object.entries(params).map(([k, v]) => [k, v.data]));
    this.act = spec.activation === "gelu_tanh" ? geluTanh : gelu;
  }

  get inDim() {
    return this.spec.inDim;
  }

  get outDim() {
    return this.spec.outDim;
  }

  /** One vector [in_dim] -> Float32Array [out_dim]. */
  apply(h) {
    const { spec, p } = this;
    if (h.length !== spec.inDim) {
      throw new LinkError(`link '${spec.name}': input has ${h.length} values, expected ${spec.inDim}`);
    }
    const ln = spec.variant === "ln-residual";
    const x = ln ? layerNorm(h, p["ln_in.weight"], p["ln_in.bias"]) : h;
    const z = matVec(p.w1, spec.hidden, spec.inDim, x, p.b1);
    for (let i = 0; i < z.length; i++) z[i] = this.act(z[i]);
    const y = matVec(p.w2, spec.outDim, spec.hidden, z, p.b2);
    if (spec.kind === "outer") {
      const r = matVec(p.w3, spec.outDim, spec.inDim, h, null);
      for (let i = 0; i < y.length; i++) y[i] += r[i];
    } else {
      for (let i = 0; i < y.length; i++) y[i] += h[i];
    }
    return Float32Array.from(ln ? layerNorm(y, p["ln_out.weight"], p["ln_out.bias"]) : y);
  }

  /** Row-major [rows, in_dim] -> [rows, out_dim] (a latent sequence). */
  applyRows(flat, rows) {
    const { inDim, outDim } = this.spec;
    if (flat.length !== rows * inDim) {
      throw new LinkError(`link '${this.spec.name}': ${flat.length} values is not ${rows} x ${inDim}`);
    }
    const out = new Float32Array(rows * outDim);
    for (let r = 0; r < rows; r++) {
      out.set(this.apply(flat.subarray(r * inDim, (r + 1) * inDim)), r * outDim);
    }
    return out;
  }
}

// -- safetensors ---------------------------------------------------------------------------

function f16ToF32(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x03ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

/** Parse a safetensors buffer -> {metadata, tensors: {name: {shape, data: Float32Array}}}. */
export function parseSafetensors(buffer, source = "links.safetensors") {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  if (bytes.length < 8) throw new LinkError(`${source}: too short to be a safetensors file`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const size = Number(view.getBigUint64(0, true));
  if (size > bytes.length - 8) {
    throw new LinkError(`${source}: header length ${size} runs past the end of the file`);
  }
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + size)));
  } catch (err) {
    throw new LinkError(`${source}: safetensors header is not valid JSON (${err.message})`);
  }
  const start = 8 + size;
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [begin, end] = info.data_offsets;
    const count = info.shape.reduce((a, b) => a * b, 1);
    // A fresh copy starting at offset 0, so typed-array views are aligned. (Node's Buffer#slice
    // returns a view, hence the explicit Uint8Array method.)
    const raw = Uint8Array.prototype.slice.call(bytes, start + begin, start + end);
    let data;
    if (info.dtype === "F32") {
      if (raw.length !== count * 4) throw new LinkError(`${source}: tensor '${name}' has ${raw.length} bytes, expected ${count * 4}`);
      data = new Float32Array(raw.buffer, 0, count);
    } else if (info.dtype === "F16") {
      if (raw.length !== count * 2) throw new LinkError(`${source}: tensor '${name}' has ${raw.length} bytes, expected ${count * 2}`);
      const halves = new Uint16Array(raw.buffer, 0, count);
      data = new Float32Array(count);
      for (let i = 0; i < count; i++) data[i] = f16ToF32(halves[i]);
    } else {
      throw new LinkError(`${source}: tensor '${name}' has dtype ${info.dtype}, expected F16 or F32`);
    }
    tensors[name] = { shape: info.shape, data };
  }
  return { metadata: header.__metadata__ ?? {}, tensors };
}

// -- link sets -----------------------------------------------------------------------------

function parseAgents(list, source) {
  const agents = [];
  for (const [i, agent] of (list ?? []).entries()) {
    if (typeof agent === "string") return [];
    if (!agent || typeof agent !== "object" || !("name" in agent) || !("hidden_size" in agent)) {
      throw new LinkError(`${source}: agents[${i}] needs 'name' and 'hidden_size'`);
    }
    agents.push({ name: agent.name, hiddenSize: agent.hidden_size, model: agent.model ?? "" });
  }
  return agents;
}

function checkAgents(agents, links, source) {
  const seen = new Set();
  for (const agent of agents) {
    checkName(agent.name, "agent");
    if (seen.has(agent.name)) throw new LinkError(`${source}: agent '${agent.name}' is listed twice`);
    seen.add(agent.name);
  }
  if (!agents.length) return;
  checkDims(links.values(), Object.fromEntries(agents.map((a) => [a.name, a.hiddenSize])), source, "its agents list");
}

/** Every link's ends name an agent of `dims` (the file's own agents list, or the models a run
 * brings: `where` says which) whose hidden size equals the link's dim. Same wording as
 * mlcpatch/links/linkfile.py. */
function checkDims(links, dims, source, where) {
  for (const { spec } of links) {
    for (const [role, agent, dim, side] of [
      ["from", spec.from, spec.inDim, "in_dim"],
      ["to", spec.to, spec.outDim, "out_dim"],
    ]) {
      if (!(agent in dims)) {
        const names = Object.keys(dims).sort().join(", ");
        throw new LinkError(`${source}: link '${spec.name}' ${role} agent '${agent}' is not in ${where} (agents: ${names})`);
      }
      if (dims[agent] !== dim) {
        throw new LinkError(
          `${source}: link '${spec.name}' has ${side}=${dim} but agent '${agent}' has hidden size ${dims[agent]} in ${where}`,
        );
      }
    }
  }
}

/** A set of links; `check(hiddenSizes)` verifies them against the models they run with. */
export class LinkSet {
  constructor(agents, links) {
    this.agents = agents;
    this.links = links; // Map name -> Link
  }

  get(name) {
    const link = this.links.get(name);
    if (!link) throw new LinkError(`no link named '${name}'; have ${[...this.links.keys()]}`);
    return link;
  }

  inner(agent) {
    return this.get(`inner_${agent}`);
  }

  outer(from, to) {
    return this.get(`outer_${from}_to_${to}`);
  }

  /** @param {Record<string, number>} hiddenSizes agent name -> model hidden size */
  check(hiddenSizes, source = "links") {
    checkDims(this.links.values(), hiddenSizes, source, "this system");
  }
}

function specFromEntry(entry, index, source, tensors) {
  if (!entry || typeof entry !== "object") throw new LinkError(`${source}: links[${index}] is not an object`);
  for (const field of ["name", "kind", "from", "to", "variant", "in_dim", "out_dim"]) {
    if (!(field in entry)) {
      throw new LinkError(`${source}: link '${entry.name ?? `links[${index}]`}' is missing field '${field}'`);
    }
  }
  let hidden = entry.hidden;
  if (hidden === undefined) {
    const w1 = tensors(`${entry.name}.w1`);
    hidden = w1 && w1.shape.length === 2 ? w1.shape[0] : undefined;
  }
  if (hidden === undefined) {
    hidden = entry.variant === "ln-residual" ? (entry.kind === "inner" ? entry.in_dim : 2 * entry.out_dim) : 256;
  }
  try {
    return makeSpec({ ...entry, hidden });
  } catch (err) {
    throw new LinkError(`${source}: ${err.message}`);
  }
}

function buildSet(agents, specs, tensorOf, tensorNames, source) {
  const links = new Map();
  const used = new Set();
  for (const spec of specs) {
    if (links.has(spec.name)) throw new LinkError(`${source}: link '${spec.name}' is listed twice`);
    const params = {};
    for (const param of Object.keys(paramShapes(spec))) {
      const key = `${spec.name}.${param}`;
      const tensor = tensorOf(key);
      if (tensor !== undefined) params[param] = tensor;
      used.add(key);
    }
    links.set(spec.name, new Link(spec, params, source));
  }
  const extra = tensorNames.filter((n) => !used.has(n)).sort();
  if (extra.length) {
    throw new LinkError(
      `${source}: tensor '${extra[0]}' belongs to no link in the manifest (${extra.length} unexpected tensor(s))`,
    );
  }
  checkAgents(agents, links, source);
  return new LinkSet(agents, links);
}

/** links.json manifest + links.safetensors bytes -> LinkSet. */
export function linksFromBinary(manifest, weights, source = "links.json") {
  const { tensors, metadata } = parseSafetensors(weights, source.replace(/\.json$/, ".safetensors"));
  if (manifest == null) {
    if (!metadata.links_manifest) throw new LinkError(`${source}: manifest not found and the weights carry none`);
    manifest = JSON.parse(metadata.links_manifest);
  }
  if (!manifest || typeof manifest !== "object") throw new LinkError(`${source}: manifest is not a JSON object`);
  if (manifest.format !== FORMAT_VERSION) {
    throw new LinkError(`${source}: 'format' is ${JSON.stringify(manifest.format)}, this reader knows ${FORMAT_VERSION}`);
  }
  for (const field of ["agents", "links"]) {
    if (!Array.isArray(manifest[field])) throw new LinkError(`${source}: field '${field}' is missing or not a list`);
  }
  const agents = parseAgents(manifest.agents, source);
  const tensorOf = (key) => tensors[key];
  const specs = manifest.links.map((entry, i) => specFromEntry(entry, i, source, tensorOf));
  return buildSet(agents, specs, tensorOf, Object.keys(tensors), source);
}

function nestedToTensor(value, where) {
  const shape = [];
  let probe = value;
  while (Array.isArray(probe)) {
    shape.push(probe.length);
    probe = probe[0];
  }
  const flat = shape.length > 1 ? value.flat(shape.length - 1) : value;
  const count = shape.reduce((a, b) => a * b, 1);
  if (!Array.isArray(value) || flat.length !== count || flat.some((v) => typeof v !== "number")) {
    throw new LinkError(`${where} is not a rectangular array of numbers`);
  }
  return { shape, data: Float32Array.from(flat) };
}

const GELU_FLAG = { erf: "gelu", tanh: "gelu_tanh" };
const PARAM_KEY = /^(w1|b1|w2|b2|w3|ln_in\.(weight|bias)|ln_out\.(weight|bias))$/;

/** Parsed recursivelink.json (new or legacy) -> LinkSet. */
export function linksFromJson(data, source = "recursivelink.json") {
  if (!data || typeof data !== "object" || Array.isArray(data)) throw new LinkError(`${source}: top level is not a JSON object`);
  if (!Array.isArray(data.links)) throw new LinkError(`${source}: field 'links' is missing or not a list`);
  if (data.norm === true) {
    throw new LinkError(
      `${source}: 'norm': true (inputs unit-normalised by the older trainer) cannot be expressed as a residual or ln-residual link; retrain with mlcpatch train`,
    );
  }
  if (data.fmt !== undefined && data.fmt !== "f32") throw new LinkError(`${source}: encoding fmt='${data.fmt}' is not supported`);
  const agents = parseAgents(data.agents, source);
  const tensors = {};
  const specs = [];
  data.links.forEach((entry, index) => {
    if (!entry || typeof entry !== "object") throw new LinkError(`${source}: links[${index}] is not an object`);
    const label = entry.name ?? `links[${index}]`;
    if ((entry.scale ?? 1) !== 1) {
      throw new LinkError(
        `${source}: link '${label}' has 'scale' ${entry.scale}; learned output scales from the older trainer cannot be expressed in this format`,
      );
    }
    const params = {};
    for (const [key, value] of Object.entries(entry)) {
      if (PARAM_KEY.test(key)) params[key] = nestedToTensor(value, `${source}: link '${label}' tensor '${key}'`);
    }
    const hasMeta = ["kind", "from", "to", "variant", "in_dim", "out_dim", "hidden", "activation"].some((f) => f in entry);
    let spec;
    if (hasMeta) {
      spec = specFromEntry(entry, index, source, (key) => params[key.slice(key.indexOf(".") + 1)]);
    } else {
      const { w1, w2 } = params;
      if (!w1 || !w2 || w1.shape.length !== 2 || w2.shape.length !== 2) {
        throw new LinkError(`links[${index}]: legacy link needs 2-D 'w1' and 'w2'`);
      }
      spec = makeSpec({
        name: `link${index}`,
        kind: "w3" in entry ? "outer" : "inner",
        from: "agent",
        to: "agent",
        variant: "ln_in.weight" in entry ? "ln-residual" : "residual",
        in_dim: w1.shape[1],
        out_dim: w2.shape[0],
        hidden: w1.shape[0],
        activation: GELU_FLAG[data.gelu ?? "erf"] ?? "gelu",
      });
    }
    specs.push(spec);
    for (const [key, value] of Object.entries(params)) tensors[`${spec.name}.${key}`] = value;
  });
  return buildSet(agents, specs, (key) => tensors[key], Object.keys(tensors), source);
}

/**
 * Fetch and load a link file: a links.json manifest (weights fetched beside it), a
 * .safetensors file (manifest embedded), or a recursivelink.json.
 */
export async function loadLinks(url, fetchFn = globalThis.fetch) {
  const text = String(url);
  const get = async (u) => {
    const response = await fetchFn(u);
    if (!response.ok) throw new LinkError(`${u}: HTTP ${response.status}`);
    return response;
  };
  if (text.endsWith(".safetensors")) {
    return linksFromBinary(null, new Uint8Array(await (await get(text)).arrayBuffer()), text);
  }
  const data = await (await get(text)).json();
  if (data && typeof data === "object" && "format" in data) {
    const weightsUrl = new URL(data.weights ?? "links.safetensors", new URL(text, globalThis.location?.href ?? "file:///")).href;
    const weights = new Uint8Array(await (await get(weightsUrl)).arrayBuffer());
    return linksFromBinary(data, weights, text);
  }
  return linksFromJson(data, text);
}
