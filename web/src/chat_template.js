// Rendering Hugging Face chat templates (Jinja) in the browser.
//
// A model's chat template is a Jinja program; the Python side renders it with jinja2 the way
// transformers does (trim_blocks, lstrip_blocks). This is the subset chat templates use:
// text, {{ }}, {# #}, {% if/elif/else %}, {% for ... in ... [if ...] %} with `loop`,
// {% set %} (including namespace attributes), whitespace control, Python-like expressions,
// tests, common filters and string/dict methods, raise_exception, range and namespace.
// Anything else raises a TemplateError naming it, rather than rendering something different.

export class TemplateError extends Error {
  constructor(message) {
    super(message);
    this.name = "TemplateError";
  }
}

// ---- lexing the template into text and tags -----------------------------------------------

function splitTemplate(source) {
  source = source.replace(/\r?\n$/, "");
  const parts = [];
  const re = /\{\{(-?)([\s\S]*?)(-?)\}\}|\{%(-?)([\s\S]*?)(-?)%\}|\{#(-?)[\s\S]*?(-?)#\}/g;
  let last = 0;
  let m;
  while ((m = re.exec(source)) !== null) {
    parts.push({ kind: "text", value: source.slice(last, m.index) });
    if (m[0].startsWith("{{")) {
      parts.push({ kind: "expr", value: m[2], lstrip: m[1] === "-", rstrip: m[3] === "-" });
    } else if (m[0].startsWith("{%")) {
      parts.push({ kind: "stmt", value: m[5].trim(), lstrip: m[4] === "-", rstrip: m[6] === "-" });
    } else {
      parts.push({ kind: "comment", lstrip: m[7] === "-", rstrip: m[8] === "-" });
    }
    last = re.lastIndex;
  }
  parts.push({ kind: "text", value: source.slice(last) });
  // Whitespace control: "-" strips all whitespace on that side; blocks and comments also get
  // lstrip_blocks (drop indentation before) and trim_blocks (drop one newline after). The
  // left sides go first: lstrip must see the newline that trim_blocks may then remove.
  for (let i = 1; i < parts.length; i += 2) {
    const p = parts[i];
    const prev = parts[i - 1];
    if (p.lstrip) prev.value = prev.value.replace(/\s+$/, "");
    // Only the template's first text starts a line without a newline of its own.
    else if (p.kind !== "expr") prev.value = prev.value.replace(i === 1 ? /(^|\n)[ \t]+$/ : /(\n)[ \t]+$/, "$1");
  }
  for (let i = 1; i < parts.length; i += 2) {
    const p = parts[i];
    const next = parts[i + 1];
    if (p.rstrip) next.value = next.value.replace(/^\s+/, "");
    else if (p.kind !== "expr") next.value = next.value.replace(/^\r?\n/, "");
  }
  return parts;
}

// ---- expressions --------------------------------------------------------------------------

const TOKEN_RE =
  /\s*(?:(\d+\.\d*|\d+)|("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|([A-Za-z_][A-Za-z0-9_]*)|(\/\/|\*\*|==|!=|<=|>=|[-+*/%~<>()[\]{}.,:|=]))/y;

function tokenize(text) {
  const tokens = [];
  TOKEN_RE.lastIndex = 0;
  let pos = 0;
  while (pos < text.length) {
    if (/^\s*$/.test(text.slice(pos))) break;
    TOKEN_RE.lastIndex = pos;
    const m = TOKEN_RE.exec(text);
    if (!m) throw new TemplateError(`cannot parse expression at: ${text.slice(pos, pos + 20)}`);
    pos = TOKEN_RE.lastIndex;
    if (m[1] !== undefined) tokens.push({ t: "num", v: Number(m[1]) });
    else if (m[2] !== undefined) tokens.push({ t: "str", v: unquote(m[2]) });
    else if (m[3] !== undefined) tokens.push({ t: "name", v: m[3] });
    else tokens.push({ t: "op", v: m[4] });
  }
  return tokens;
}

function unquote(literal) {
  const body = literal.slice(1, -1);
  const escapes = { n: "\n", t: "\t", r: "\r", "\\": "\\", "'": "'", '"': '"' };
  return body.replace(/\\(.)/g, (_, c) => escapes[c] ?? "\\" + c);
}

class Parser {
  constructor(text) {
    this.tokens = tokenize(text);
    this.i = 0;
  }
  peek(offset = 0) {
    return this.tokens[this.i + offset];
  }
  isOp(v) {
    const t = this.peek();
    return t && t.t === "op" && t.v === v;
  }
  isName(v) {
    const t = this.peek();
    return t && t.t === "name" && t.v === v;
  }
  take() {
    return this.tokens[this.i++];
  }
  expectOp(v) {
    if (!this.isOp(v)) throw new TemplateError(`expected '${v}' in expression`);
    this.i++;
  }
  expectName() {
    const t = this.take();
    if (!t || t.t !== "name") throw new TemplateError("expected a name in expression");
    return t.v;
  }
  done() {
    return this.i >= this.tokens.length;
  }

  expression() {
    const value = this.or();
    if (this.isName("if")) {
      this.take();
      const cond = this.or();
      let other = { k: "lit", v: undefined };
      if (this.isName("else")) {
        this.take();
        other = this.expression();
      }
      return { k: "cond", cond, yes: value, no: other };
    }
    return value;
  }
  or() {
    let left = this.and();
    while (this.isName("or")) {
      this.take();
      left = { k: "or", a: left, b: this.and() };
    }
    return left;
  }
  and() {
    let left = this.not();
    while (this.isName("and")) {
      this.take();
      left = { k: "and", a: left, b: this.not() };
    }
    return left;
  }
  not() {
    if (this.isName("not")) {
      this.take();
      return { k: "not", a: this.not() };
    }
    return this.compare();
  }
  compare() {
    let left = this.concat();
    for (;;) {
      const t = this.peek();
      if (t?.t === "op" && ["==", "!=", "<", ">", "<=", ">="].includes(t.v)) {
        this.take();
        left = { k: "cmp", op: t.v, a: left, b: this.concat() };
      } else if (this.isName("in")) {
        this.take();
        left = { k: "in", a: left, b: this.concat() };
      } else if (this.isName("not") && this.peek(1)?.v === "in") {
        this.i += 2;
        left = { k: "not", a: { k: "in", a: left, b: this.concat() } };
      } else if (this.isName("is")) {
        this.take();
        let negate = false;
        if (this.isName("not")) {
          this.take();
          negate = true;
        }
        const test = { k: "test", name: this.expectName(), a: left };
        left = negate ? { k: "not", a: test } : test;
      } else {
        return left;
      }
    }
  }
  concat() {
    let left = this.add();
    while (this.isOp("~")) {
      this.take();
      left = { k: "bin", op: "~", a: left, b: this.add() };
    }
    return left;
  }
  add() {
    let left = this.mul();
    while (this.isOp("+") || this.isOp("-")) {
      const op = this.take().v;
      left = { k: "bin", op, a: left, b: this.mul() };
    }
    return left;
  }
  mul() {
    let left = this.unary();
    while (["*", "/", "//", "%"].some((op) => this.isOp(op))) {
      const op = this.take().v;
      left = { k: "bin", op, a: left, b: this.unary() };
    }
    return left;
  }
  unary() {
    if (this.isOp("-")) {
      this.take();
      return { k: "neg", a: this.unary() };
    }
    return this.postfix(this.primary());
  }
  postfix(node) {
    for (;;) {
      if (this.isOp(".")) {
        this.take();
        node = { k: "attr", obj: node, name: this.expectName() };
      } else if (this.isOp("[")) {
        this.take();
        node = this.subscript(node);
      } else if (this.isOp("(")) {
        this.take();
        node = { k: "call", fn: node, args: this.args(")") };
      } else if (this.isOp("|")) {
        this.take();
        const name = this.expectName();
        let args = [];
        if (this.isOp("(")) {
          this.take();
          args = this.args(")");
        }
        node = { k: "filter", name, a: node, args };
      } else {
        return node;
      }
    }
  }
  subscript(obj) {
    const parts = [null, null];
    let slice = false;
    let idx = 0;
    while (!this.isOp("]")) {
      if (this.isOp(":")) {
        this.take();
        slice = true;
        idx = 1;
        continue;
      }
      parts[idx] = this.expression();
    }
    this.expectOp("]");
    return slice ? { k: "slice", obj, start: parts[0], stop: parts[1] } : { k: "index", obj, key: parts[0] };
  }
  args(close) {
    const args = [];
    while (!this.isOp(close)) {
      if (this.peek()?.t === "name" && this.peek(1)?.v === "=") {
        const name = this.take().v;
        this.take();
        args.push({ kw: name, value: this.expression() });
      } else {
        args.push({ value: this.expression() });
      }
      if (!this.isOp(close)) this.expectOp(",");
    }
    this.expectOp(close);
    return args;
  }
  primary() {
    const t = this.take();
    if (!t) throw new TemplateError("unexpected end of expression");
    if (t.t === "num" || t.t === "str") return { k: "lit", v: t.v };
    if (t.t === "name") {
      const literals = { true: true, True: true, false: false, False: false, none: null, None: null };
      if (t.v in literals) return { k: "lit", v: literals[t.v] };
      return { k: "var", name: t.v };
    }
    if (t.v === "(") {
      const value = this.expression();
      this.expectOp(")");
      return value;
    }
    if (t.v === "[") {
      return { k: "list", items: this.args("]").map((a) => a.value) };
    }
    if (t.v === "{") {
      const entries = [];
      while (!this.isOp("}")) {
        const key = this.expression();
        this.expectOp(":");
        entries.push([key, this.expression()]);
        if (!this.isOp("}")) this.expectOp(",");
      }
      this.expectOp("}");
      return { k: "dict", entries };
    }
    throw new TemplateError(`unexpected '${t.v}' in expression`);
  }
}

function parseExpression(text) {
  const parser = new Parser(text);
  const node = parser.expression();
  if (!parser.done()) throw new TemplateError(`unexpected '${parser.peek().v}' in: ${text}`);
  return node;
}

// ---- statements -------------------------------------------------------------------------

function parseTemplate(source) {
  const parts = splitTemplate(source);
  let i = 0;
  const body = (terminators) => {
    const nodes = [];
    while (i < parts.length) {
      const p = parts[i];
      if (p.kind === "text") {
        if (p.value) nodes.push({ k: "text", v: p.value });
        i++;
      } else if (p.kind === "comment") {
        i++;
      } else if (p.kind === "expr") {
        nodes.push({ k: "out", e: parseExpression(p.value) });
        i++;
      } else {
        const word = p.value.split(/\s+/)[0];
        if (terminators.includes(word)) return { nodes, end: p };
        i++;
        nodes.push(statement(word, p.value.slice(word.length).trim()));
      }
    }
    if (terminators.length) throw new TemplateError(`missing {% ${terminators.at(-1)} %}`);
    return { nodes, end: null };
  };
  const statement = (word, rest) => {
    if (word === "if") {
      const branches = [];
      let cond = parseExpression(rest);
      for (;;) {
        const { nodes, end } = body(["elif", "else", "endif"]);
        branches.push({ cond, nodes });
        i++;
        const endWord = end.value.split(/\s+/)[0];
        if (endWord === "endif") break;
        cond = endWord === "elif" ? parseExpression(end.value.slice(4)) : { k: "lit", v: true };
      }
      return { k: "if", branches };
    }
    if (word === "for") {
      const m = /^([\w\s,]+?)\s+in\s+([\s\S]+)$/.exec(rest);
      if (!m) throw new TemplateError(`cannot parse {% for ${rest} %}`);
      const targets = m[1].split(",").map((s) => s.trim());
      // "for x in xs if cond": split off a trailing filter at a top-level " if ".
      const parser = new Parser(m[2]);
      const iter = parser.or();
      let filter = null;
      if (parser.isName("if")) {
        parser.take();
        filter = parser.expression();
      }
      if (!parser.done()) throw new TemplateError(`cannot parse {% for ${rest} %}`);
      const { nodes, end } = body(["else", "endfor"]);
      i++;
      let otherwise = [];
      if (end.value.startsWith("else")) {
        otherwise = body(["endfor"]).nodes;
        i++;
      }
      return { k: "for", targets, iter, filter, nodes, otherwise };
    }
    if (word === "set") {
      const m = /^([\w.]+)\s*=\s*([\s\S]+)$/.exec(rest);
      if (!m) throw new TemplateError(`only {% set name = value %} is supported: ${rest}`);
      return { k: "set", target: m[1].split("."), e: parseExpression(m[2]) };
    }
    throw new TemplateError(`unsupported template statement {% ${word} %}`);
  };
  return body([]).nodes;
}

// ---- evaluation -------------------------------------------------------------------------

function truthy(v) {
  if (Array.isArray(v) || typeof v === "string") return v.length > 0;
  if (v && typeof v === "object" && !(v instanceof Namespace)) return Object.keys(v).length > 0;
  return Boolean(v);
}

function show(v) {
  if (v === undefined) return "";
  if (v === null) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "string") return v;
  if (typeof v === "number") return String(v);
  return pyRepr(v);
}

function pyRepr(v) {
  if (v === null || v === undefined) return "None";
  if (v === true) return "True";
  if (v === false) return "False";
  if (typeof v === "string") return `'${v.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
  if (Array.isArray(v)) return `[${v.map(pyRepr).join(", ")}]`;
  if (typeof v === "object") {
    return `{${Object.entries(v)
      .map(([k, x]) => `${pyRepr(k)}: ${pyRepr(x)}`)
      .join(", ")}}`;
  }
  return String(v);
}

// json.dumps(..., ensure_ascii=False) spacing, which is what transformers' tojson produces.
function toJson(v, indent) {
  if (indent) return JSON.stringify(v, null, indent);
  if (v === undefined || v === null) return "null";
  if (Array.isArray(v)) return `[${v.map((x) => toJson(x)).join(", ")}]`;
  if (typeof v === "object") {
    return `{${Object.entries(v)
      .map(([k, x]) => `${JSON.stringify(k)}: ${toJson(x)}`)
      .join(", ")}}`;
  }
  return JSON.stringify(v);
}

class Namespace {
  constructor(values) {
    Object.assign(this, values);
  }
}

function equal(a, b) {
  if (a === b) return true;
  if (a == null || b == null) return a === b;
  if (typeof a === "object" && typeof b === "object") return JSON.stringify(a) === JSON.stringify(b);
  return false;
}

const STRING_METHODS = {
  strip: (s, chars) => trimChars(s, chars, true, true),
  lstrip: (s, chars) => trimChars(s, chars, true, false),
  rstrip: (s, chars) => trimChars(s, chars, false, true),
  upper: (s) => s.toUpperCase(),
  lower: (s) => s.toLowerCase(),
  title: (s) => s.replace(/\w\S*/g, (w) => w[0].toUpperCase() + w.slice(1).toLowerCase()),
  capitalize: (s) => (s ? s[0].toUpperCase() + s.slice(1).toLowerCase() : s),
  startswith: (s, p) => (Array.isArray(p) ? p.some((x) => s.startsWith(x)) : s.startsWith(p)),
  endswith: (s, p) => (Array.isArray(p) ? p.some((x) => s.endsWith(x)) : s.endsWith(p)),
  split: (s, sep, max) => pySplit(s, sep, max),
  replace: (s, a, b) => s.split(a).join(b),
  find: (s, sub) => s.indexOf(sub),
  count: (s, sub) => s.split(sub).length - 1,
  join: (s, items) => items.map(show).join(s),
  format: (s, ...args) => {
    let n = 0;
    return s.replace(/\{\}/g, () => show(args[n++]));
  },
};

function trimChars(s, chars, left, right) {
  if (chars == null) {
    if (left) s = s.replace(/^\s+/, "");
    if (right) s = s.replace(/\s+$/, "");
    return s;
  }
  let a = 0;
  let b = s.length;
  while (left && a < b && chars.includes(s[a])) a++;
  while (right && b > a && chars.includes(s[b - 1])) b--;
  return s.slice(a, b);
}

function pySplit(s, sep, max) {
  if (sep == null) return s.trim().split(/\s+/).filter(Boolean);
  const parts = s.split(sep);
  if (max == null || max < 0 || parts.length <= max + 1) return parts;
  return [...parts.slice(0, max), parts.slice(max).join(sep)];
}

const DICT_METHODS = {
  get: (d, key, fallback = null) => (key in d ? d[key] : fallback),
  items: (d) => Object.entries(d),
  keys: (d) => Object.keys(d),
  values: (d) => Object.values(d),
};

const FILTERS = {
  trim: (v) => show(v).trim(),
  length: (v) => (typeof v === "object" && !Array.isArray(v) ? Object.keys(v) : v).length,
  count: (v) => FILTERS.length(v),
  upper: (v) => show(v).toUpperCase(),
  lower: (v) => show(v).toLowerCase(),
  capitalize: (v) => STRING_METHODS.capitalize(show(v)),
  title: (v) => STRING_METHODS.title(show(v)),
  string: (v) => show(v),
  int: (v) => Math.trunc(Number(v)) || 0,
  float: (v) => Number(v) || 0,
  first: (v) => v[0],
  last: (v) => v[v.length - 1],
  list: (v) => Array.from(typeof v === "object" && !Array.isArray(v) ? Object.keys(v) : v),
  join: (v, sep = "") => v.map(show).join(sep),
  default: (v, fallback = "", boolean = false) =>
    v === undefined || (boolean && !truthy(v)) ? fallback : v,
  replace: (v, a, b) => show(v).split(a).join(b),
  tojson: (v, indent) => toJson(v, indent),
  items: (v) => Object.entries(v),
  reverse: (v) => (typeof v === "string" ? [...v].reverse().join("") : [...v].reverse()),
  safe: (v) => v,
};

const TESTS = {
  defined: (v) => v !== undefined,
  undefined: (v) => v === undefined,
  none: (v) => v === null,
  string: (v) => typeof v === "string",
  number: (v) => typeof v === "number",
  integer: (v) => Number.isInteger(v),
  boolean: (v) => typeof v === "boolean",
  true: (v) => v === true,
  false: (v) => v === false,
  mapping: (v) => v !== null && typeof v === "object" && !Array.isArray(v),
  sequence: (v) => Array.isArray(v) || typeof v === "string",
  iterable: (v) => Array.isArray(v) || typeof v === "string" || (v !== null && typeof v === "object"),
};

function callArgs(ctx, args) {
  const positional = [];
  const keywords = {};
  for (const a of args) {
    if (a.kw) keywords[a.kw] = evaluate(a.value, ctx);
    else positional.push(evaluate(a.value, ctx));
  }
  return { positional, keywords };
}

function evaluate(node, ctx) {
  switch (node.k) {
    case "lit":
      return node.v;
    case "var":
      return ctx.lookup(node.name);
    case "list":
      return node.items.map((n) => evaluate(n, ctx));
    case "dict":
      return Object.fromEntries(node.entries.map(([k, v]) => [evaluate(k, ctx), evaluate(v, ctx)]));
    case "attr": {
      const obj = evaluate(node.obj, ctx);
      if (obj == null) return undefined;
      if (typeof obj === "string" && node.name in STRING_METHODS) {
        return (...args) => STRING_METHODS[node.name](obj, ...args);
      }
      if (typeof obj === "object" && !Array.isArray(obj) && !(obj instanceof Namespace)) {
        if (Object.hasOwn(obj, node.name)) return obj[node.name];
        if (node.name in DICT_METHODS) return (...args) => DICT_METHODS[node.name](obj, ...args);
        return undefined;
      }
      return Object.hasOwn(obj, node.name) ? obj[node.name] : undefined;
    }
    case "index": {
      const obj = evaluate(node.obj, ctx);
      let key = evaluate(node.key, ctx);
      if (obj == null) return undefined;
      if ((Array.isArray(obj) || typeof obj === "string") && typeof key === "number" && key < 0) {
        key += obj.length;
      }
      return Object.hasOwn(Object(obj), key) ? obj[key] : undefined;
    }
    case "slice": {
      const obj = evaluate(node.obj, ctx);
      const start = node.start ? evaluate(node.start, ctx) : undefined;
      const stop = node.stop ? evaluate(node.stop, ctx) : undefined;
      return obj.slice(start, stop);
    }
    case "call": {
      const fn = evaluate(node.fn, ctx);
      if (typeof fn !== "function") throw new TemplateError("call of something not callable");
      const { positional, keywords } = callArgs(ctx, node.args);
      return Object.keys(keywords).length ? fn(...positional, keywords) : fn(...positional);
    }
    case "filter": {
      const f = FILTERS[node.name];
      if (!f) throw new TemplateError(`unsupported filter |${node.name}`);
      const { positional, keywords } = callArgs(ctx, node.args);
      if (node.name === "tojson" && keywords.indent) positional[0] = keywords.indent;
      return f(evaluate(node.a, ctx), ...positional);
    }
    case "test": {
      const t = TESTS[node.name];
      if (!t) throw new TemplateError(`unsupported test 'is ${node.name}'`);
      return t(evaluate(node.a, ctx));
    }
    case "not":
      return !truthy(evaluate(node.a, ctx));
    case "and": {
      const a = evaluate(node.a, ctx);
      return truthy(a) ? evaluate(node.b, ctx) : a;
    }
    case "or": {
      const a = evaluate(node.a, ctx);
      return truthy(a) ? a : evaluate(node.b, ctx);
    }
    case "cond":
      return truthy(evaluate(node.cond, ctx)) ? evaluate(node.yes, ctx) : evaluate(node.no, ctx);
    case "neg":
      return -evaluate(node.a, ctx);
    case "in": {
      const a = evaluate(node.a, ctx);
      const b = evaluate(node.b, ctx);
      if (typeof b === "string") return b.includes(a);
      if (Array.isArray(b)) return b.some((x) => equal(x, a));
      return b != null && typeof b === "object" && Object.hasOwn(b, a);
    }
    case "cmp": {
      const a = evaluate(node.a, ctx);
      const b = evaluate(node.b, ctx);
      switch (node.op) {
        case "==":
          return equal(a, b);
        case "!=":
          return !equal(a, b);
        case "<":
          return a < b;
        case ">":
          return a > b;
        case "<=":
          return a <= b;
        default:
          return a >= b;
      }
    }
    case "bin": {
      const a = evaluate(node.a, ctx);
      const b = evaluate(node.b, ctx);
      switch (node.op) {
        case "~":
          return show(a) + show(b);
        case "+":
          if (Array.isArray(a)) return [...a, ...b];
          if (typeof a === "string" || typeof b === "string") {
            if (typeof a !== typeof b) throw new TemplateError("cannot add a string and a non-string");
          }
          return a + b;
        case "-":
          return a - b;
        case "*":
          return typeof a === "string" ? a.repeat(b) : a * b;
        case "/":
          return a / b;
        case "//":
          return Math.floor(a / b);
        default:
          return typeof a === "string" ? STRING_METHODS.format(a, b) : ((a % b) + b) % b;
      }
    }
    default:
      throw new TemplateError(`cannot evaluate ${node.k}`);
  }
}

class Context {
  constructor(vars, parent = null) {
    this.vars = vars;
    this.parent = parent;
  }
  lookup(name) {
    for (let c = this; c; c = c.parent) {
      if (Object.hasOwn(c.vars, name)) return c.vars[name];
    }
    return undefined;
  }
}

function run(nodes, ctx, out) {
  for (const node of nodes) {
    switch (node.k) {
      case "text":
        out.push(node.v);
        break;
      case "out":
        out.push(show(evaluate(node.e, ctx)));
        break;
      case "if":
        for (const branch of node.branches) {
          if (truthy(evaluate(branch.cond, ctx))) {
            run(branch.nodes, ctx, out);
            break;
          }
        }
        break;
      case "set": {
        const value = evaluate(node.e, ctx);
        if (node.target.length === 1) {
          ctx.vars[node.target[0]] = value;
        } else {
          const ns = ctx.lookup(node.target[0]);
          if (!(ns instanceof Namespace)) throw new TemplateError("set on a non-namespace");
          ns[node.target[1]] = value;
        }
        break;
      }
      case "for": {
        let items = evaluate(node.iter, ctx) ?? [];
        if (typeof items === "object" && !Array.isArray(items)) items = Object.keys(items);
        items = Array.from(items);
        const bind = (item) => {
          if (node.targets.length === 1) return { [node.targets[0]]: item };
          return Object.fromEntries(node.targets.map((t, j) => [t, item[j]]));
        };
        if (node.filter) {
          items = items.filter((item) => truthy(evaluate(node.filter, new Context(bind(item), ctx))));
        }
        if (items.length === 0) run(node.otherwise, ctx, out);
        items.forEach((item, index) => {
          const loop = {
            index: index + 1,
            index0: index,
            revindex: items.length - index,
            revindex0: items.length - index - 1,
            first: index === 0,
            last: index === items.length - 1,
            length: items.length,
            previtem: items[index - 1],
            nextitem: items[index + 1],
          };
          // Jinja scopes loop bodies: a plain {% set %} inside does not leak out.
          run(node.nodes, new Context({ ...bind(item), loop }, ctx), out);
        });
        break;
      }
      default:
        throw new TemplateError(`cannot run ${node.k}`);
    }
  }
}

const GLOBALS = {
  raise_exception: (message) => {
    throw new TemplateError(`template error: ${message}`);
  },
  range: (a, b, step = 1) => {
    const [start, stop] = b === undefined ? [0, a] : [a, b];
    const out = [];
    for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
    return out;
  },
  namespace: (values = {}) => new Namespace(values),
  strftime_now: (format) => strftime(new Date(), format),
};

function strftime(date, format) {
  const months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const pad = (n) => String(n).padStart(2, "0");
  const codes = {
    d: pad(date.getDate()),
    m: pad(date.getMonth() + 1),
    Y: String(date.getFullYear()),
    b: months[date.getMonth()],
    B: date.toLocaleString("en", { month: "long" }),
    H: pad(date.getHours()),
    M: pad(date.getMinutes()),
  };
  return format.replace(/%(.)/g, (m, c) => codes[c] ?? m);
}

const cache = new Map();

/** Render a chat template with `variables` (messages, add_generation_prompt, bos_token, ...). */
export function renderChatTemplate(source, variables) {
  let program = cache.get(source);
  if (!program) {
    program = parseTemplate(source);
    cache.set(source, program);
  }
  const out = [];
  run(program, new Context({ ...variables }, new Context(GLOBALS)), out);
  return out.join("");
}
