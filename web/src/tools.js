// Local tools for the Deliberation pattern; mirrors mlcpatch/loop/tools.py function by function.
//
// The calculator parses the same Python-expression subset that tools.py hands to ast.parse
// and evaluates it with Python's semantics: integers are exact (BigInt), `/` is true
// division, `//` and `%` floor towards -inf, floats print like Python's `f"{v:.6g}"`.
// Identical results matter because the tool lines become part of the agents' prompts, and
// the browser's answer must equal the Python run's. No eval(), no network.

import { PY_SPACE, pyStrip } from "./pystr.js";

export class CalculatorError extends Error {
  constructor(message) {
    super(message);
    this.name = "CalculatorError";
  }
}

// Bounds on the work one question can cost, the same as tools.py's (see the notes there): the
// calculator's input is the user's question, and a hostile one must be skipped, not freeze
// the page. Lengths count code points, as Python's len() does.
const MAX_QUESTION_LENGTH = 10_000; // a longer question gets no calculator lines at all
const MAX_LENGTH = 200; // one expression, after ^ -> **
const MAX_POWER = 10_000n; // |exponent| of any power
// Bits of any int result, checked against an upper bound before computing it: nested powers,
// ((9^9999)^9999)^9999, would otherwise run for many seconds and then throw a RangeError.
const MAX_BITS = 40_000n;
// \d in a Python str pattern is any Unicode decimal digit. An expression is group 1; the
// second branch swallows the rest of a run in which group 1 cannot end, so a run of "(" is
// scanned once, not once per "(" (quadratic). Group 1 matches exactly what it would alone.
const EXPR_CHARS = `[\\p{Nd}${PY_SPACE}.+\\-*/%()^x×÷]`;
const EXPR_RE = new RegExp(
  `((?:sqrt\\()?[\\p{Nd}.(]${EXPR_CHARS}*[\\p{Nd})])|[\\p{Nd}.(]${EXPR_CHARS}*`,
  "gu",
);
const TIMES_RE = new RegExp(`(?<=\\p{Nd})[${PY_SPACE}]*x[${PY_SPACE}]*(?=\\p{Nd})`, "gu");
const OPERATOR_RE = /[+\-*/%^x×÷]|sqrt/u;
const NUMBER_ONLY_RE = /^[\p{Nd}.]+$/u;

// --- values: {int: BigInt} or {float: number}, like Python's int and float ------------------

const int = (v) => ({ kind: "int", v });
const float = (v) => ({ kind: "float", v });

// Python raises OverflowError here (not a CalculatorError, so tools.py lets it escape; see
// the notes in tests/test_loop_js_tools.py). Number(BigInt) rounds exactly like int -> float.
function toFloat(value) {
  if (value.kind === "float") return value.v;
  const result = Number(value.v);
  if (!Number.isFinite(result)) throw new CalculatorError("int too large to convert to float");
  return result;
}

// int / int correctly rounded, as CPython's long_true_divide does for any size.
function intTrueDivide(a, b) {
  if (b === 0n) throw new CalculatorError("division by zero");
  const limit = 1n << 53n;
  const absA = a < 0n ? -a : a;
  const absB = b < 0n ? -b : b;
  if (absA <= limit && absB <= limit) return Number(a) / Number(b);
  const negative = a < 0n !== b < 0n;
  // Scale so the quotient has 64+ bits, then fold the remainder into a sticky bit: one
  // rounding (BigInt -> Number) of an exact-enough value.
  const shift = 64 + bitLength(absB) - bitLength(absA);
  const num = shift > 0 ? absA << BigInt(shift) : absA;
  const den = shift < 0 ? absB << BigInt(-shift) : absB;
  let q = num / den;
  if (num % den !== 0n) q |= 1n;
  let result = Number(q);
  let s = shift;
  while (s > 0) {
    const step = Math.min(s, 1000);
    result /= 2 ** step;
    s -= step;
  }
  while (s < 0) {
    const step = Math.min(-s, 1000);
    result *= 2 ** step;
    s += step;
  }
  if (!Number.isFinite(result)) throw new CalculatorError("integer division result too large");
  return negative ? -result : result;
}

function bitLength(big) {
  return big === 0n ? 0 : big.toString(2).length;
}

// Python's len(): code points, where .length counts UTF-16 units.
function pyLen(text) {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

// tools.py's _int_result_bits: an upper bound on the bit length of `x op y` for ints (BigInt),
// known without computing it. //, % and / never give a larger int, nor does a negative power.
function intResultBits(op, x, y) {
  const a = BigInt(bitLength(x < 0n ? -x : x));
  const b = BigInt(bitLength(y < 0n ? -y : y));
  switch (op) {
    case "**":
      return y > 0n ? a * y : 0n;
    case "*":
      return a + b;
    case "+":
    case "-":
      return (a > b ? a : b) + 1n;
    default:
      return 0n;
  }
}

function floatFloorDivMod(vx, wx) {
  if (wx === 0) throw new CalculatorError("division by zero");
  // CPython's float_divmod, step by step.
  let mod = vx % wx;
  let div = (vx - mod) / wx;
  if (mod) {
    if (wx < 0 !== mod < 0) {
      mod += wx;
      div -= 1.0;
    }
  } else {
    mod = copySign(0, wx);
  }
  let floordiv;
  if (div) {
    floordiv = Math.floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
  } else {
    floordiv = copySign(0, vx / wx);
  }
  return [floordiv, mod];
}

function copySign(magnitude, sign) {
  const negative = sign < 0 || Object.is(sign, -0);
  return negative ? -Math.abs(magnitude) : Math.abs(magnitude);
}

function isOddInteger(x) {
  return Number.isInteger(x) && Math.abs(x % 2) === 1;
}

// CPython's float_pow special cases; a negative base with a fractional exponent gives a
// complex number in Python, which the calculator cannot show: an error here.
function floatPow(iv, iw) {
  if (iw === 0) return 1.0;
  if (Number.isNaN(iv)) return iv;
  if (Number.isNaN(iw)) return iv === 1.0 ? 1.0 : iw;
  if (!Number.isFinite(iw)) {
    const av = Math.abs(iv);
    if (av === 1.0) return 1.0;
    return iw > 0 === av > 1.0 ? Math.abs(iw) : 0.0;
  }
  if (!Number.isFinite(iv)) {
    const odd = isOddInteger(iw);
    if (iw > 0) return odd ? iv : Math.abs(iv);
    return odd ? copySign(0, iv) : 0.0;
  }
  if (iv === 0) {
    if (iw < 0) throw new CalculatorError("0.0 cannot be raised to a negative power");
    return isOddInteger(iw) ? iv : 0.0;
  }
  let base = iv;
  let negate = false;
  if (base < 0) {
    if (iw !== Math.floor(iw)) throw new CalculatorError("complex result");
    base = -base;
    negate = isOddInteger(iw);
  }
  if (base === 1.0) return negate ? -1.0 : 1.0;
  const result = base ** iw;
  if (!Number.isFinite(result)) throw new CalculatorError("numerical result out of range");
  return negate ? -result : result;
}

function binary(op, a, b) {
  if (a.kind === "int" && b.kind === "int") {
    const x = a.v;
    const y = b.v;
    switch (op) {
      case "+":
        return int(x + y);
      case "-":
        return int(x - y);
      case "*":
        return int(x * y);
      case "/":
        return float(intTrueDivide(x, y));
      case "//": {
        if (y === 0n) throw new CalculatorError("division by zero");
        let q = x / y;
        if (x % y !== 0n && x < 0n !== y < 0n) q -= 1n;
        return int(q);
      }
      case "%": {
        if (y === 0n) throw new CalculatorError("division by zero");
        let r = x % y;
        if (r !== 0n && r < 0n !== y < 0n) r += y;
        return int(r);
      }
      case "**":
        if (y >= 0n) return int(x ** y);
        return float(floatPow(toFloat(a), toFloat(b)));
    }
  }
  const x = toFloat(a);
  const y = toFloat(b);
  switch (op) {
    case "+":
      return float(x + y);
    case "-":
      return float(x - y);
    case "*":
      return float(x * y);
    case "/":
      if (y === 0) throw new CalculatorError("division by zero");
      return float(x / y);
    case "//":
      return float(floatFloorDivMod(x, y)[0]);
    case "%":
      return float(floatFloorDivMod(x, y)[1]);
    case "**":
      return float(floatPow(x, y));
  }
  throw new CalculatorError(`unknown operator ${op}`);
}

// Python's round(x) for one argument: half to even, an int.
function pyRound(value) {
  if (value.kind === "int") return value;
  const x = value.v;
  if (!Number.isFinite(x)) throw new CalculatorError("cannot round an infinity or NaN");
  let r = Math.round(x);
  if (Math.abs(x - Math.trunc(x)) === 0.5) r = 2.0 * Math.round(x / 2.0);
  return int(BigInt(r));
}

const FUNCS = {
  sqrt: (value) => {
    const x = toFloat(value);
    if (x < 0) throw new CalculatorError("math domain error");
    return float(Math.sqrt(x));
  },
  abs: (value) => (value.kind === "int" ? int(value.v < 0n ? -value.v : value.v) : float(Math.abs(value.v))),
  round: pyRound,
};

// --- the parser: the part of Python's expression grammar the calculator can meet -----------

const DIGITS = "[0-9](?:_?[0-9])*";
const NUMBER_RE = new RegExp(
  "0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+|" +
    `(?:${DIGITS}(?:\\.(?:${DIGITS})?)?|\\.${DIGITS})(?:[eE][+-]?${DIGITS})?`,
  "y",
);
// Python parses these names as constants; True and False are ints to isinstance().
const CONSTANTS = { True: 1n, False: 0n };
const NAME_RE = /[A-Za-z_][A-Za-z0-9_]*/y;
const OPERATORS = ["**", "//", "+", "-", "*", "/", "%", "(", ")", ","];

class SyntaxErr extends CalculatorError {}

function tokenize(text) {
  const tokens = [];
  let depth = 0;
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === " " || c === "\t" || c === "\f") {
      i++;
      continue;
    }
    if (c === "#") {
      while (i < text.length && text[i] !== "\n" && text[i] !== "\r") i++;
      continue;
    }
    if (c === "\n" || c === "\r") {
      // Python joins lines only inside brackets.
      if (depth === 0) throw new SyntaxErr("invalid syntax");
      i++;
      continue;
    }
    NUMBER_RE.lastIndex = i;
    const number = NUMBER_RE.exec(text);
    if (number) {
      const raw = number[0];
      i += raw.length;
      if (i < text.length && /[A-Za-z0-9_]/.test(text[i])) throw new SyntaxErr("invalid literal");
      tokens.push({ type: "number", value: numberValue(raw) });
      continue;
    }
    NAME_RE.lastIndex = i;
    const name = NAME_RE.exec(text);
    if (name) {
      i += name[0].length;
      tokens.push({ type: "name", value: name[0] });
      continue;
    }
    const op = OPERATORS.find((o) => text.startsWith(o, i));
    if (!op) throw new SyntaxErr(`invalid character ${JSON.stringify(c)}`);
    if (op === "(") depth++;
    if (op === ")") depth = Math.max(0, depth - 1);
    tokens.push({ type: "op", value: op });
    i += op.length;
  }
  return tokens;
}

function numberValue(raw) {
  const clean = raw.replace(/_/g, "");
  if (/^0[xXoObB]/.test(clean)) return int(BigInt(clean));
  if (/[.eE]/.test(clean)) return float(Number(clean));
  // Python 3 refuses leading zeros in decimal integers ("01"), but not "00".
  if (/^0+[1-9]/.test(clean)) throw new SyntaxErr("leading zeros in decimal integer literals");
  return int(BigInt(clean));
}

class Parser {
  constructor(tokens) {
    this.tokens = tokens;
    this.pos = 0;
  }

  peek(value) {
    const token = this.tokens[this.pos];
    return token && token.type === "op" && token.value === value;
  }

  take(value) {
    if (!this.peek(value)) throw new SyntaxErr("invalid syntax");
    this.pos++;
  }

  parse() {
    const node = this.expr();
    if (this.pos !== this.tokens.length) throw new SyntaxErr("invalid syntax");
    return node;
  }

  expr() {
    let node = this.term();
    while (this.peek("+") || this.peek("-")) {
      const op = this.tokens[this.pos++].value;
      node = { type: "bin", op, left: node, right: this.term() };
    }
    return node;
  }

  term() {
    let node = this.factor();
    while (["*", "/", "//", "%"].some((o) => this.peek(o))) {
      const op = this.tokens[this.pos++].value;
      node = { type: "bin", op, left: node, right: this.factor() };
    }
    return node;
  }

  factor() {
    if (this.peek("+") || this.peek("-")) {
      const op = this.tokens[this.pos++].value;
      return { type: "unary", op, operand: this.factor() };
    }
    return this.power();
  }

  power() {
    const base = this.primary();
    if (this.peek("**")) {
      this.pos++;
      return { type: "bin", op: "**", left: base, right: this.factor() };
    }
    return base;
  }

  primary() {
    let node = this.atom();
    while (this.peek("(")) {
      this.pos++;
      const args = [];
      while (!this.peek(")")) {
        args.push(this.expr());
        if (!this.peek(",")) break;
        this.pos++;
      }
      this.take(")");
      node = { type: "call", func: node, args };
    }
    return node;
  }

  atom() {
    const token = this.tokens[this.pos];
    if (!token) throw new SyntaxErr("invalid syntax");
    this.pos++;
    if (token.type === "number") return { type: "const", value: token.value };
    if (token.type === "name") {
      if (token.value in CONSTANTS) return { type: "const", value: int(CONSTANTS[token.value]) };
      return { type: "name", id: token.value };
    }
    if (token.value === "(") {
      if (this.peek(")")) {
        this.pos++;
        return { type: "tuple" };
      }
      const inner = this.expr();
      if (this.peek(",")) {
        // A tuple: parse the rest for syntax, then refuse it like tools.py does.
        while (this.peek(",")) {
          this.pos++;
          if (this.peek(")")) break;
          this.expr();
        }
        this.take(")");
        return { type: "tuple" };
      }
      this.take(")");
      return inner;
    }
    throw new SyntaxErr("invalid syntax");
  }
}

function evaluate(node) {
  switch (node.type) {
    case "const":
      return node.value;
    case "bin": {
      const left = evaluate(node.left);
      const right = evaluate(node.right);
      if (node.op === "**") {
        const exponent = right.kind === "int" ? (right.v < 0n ? -right.v : right.v) : Math.abs(right.v);
        if (right.kind === "int" ? exponent > MAX_POWER : exponent > Number(MAX_POWER)) {
          throw new CalculatorError("exponent too large");
        }
      }
      if (left.kind === "int" && right.kind === "int") {
        if (intResultBits(node.op, left.v, right.v) > MAX_BITS) {
          throw new CalculatorError("result too large");
        }
      }
      return binary(node.op, left, right);
    }
    case "unary": {
      const value = evaluate(node.operand);
      if (node.op === "+") return value;
      return value.kind === "int" ? int(-value.v) : float(-value.v);
    }
    case "call":
      if (node.func.type === "name" && node.func.id in FUNCS && node.args.length === 1) {
        return FUNCS[node.func.id](evaluate(node.args[0]));
      }
      throw new CalculatorError("not allowed in a calculation");
    default:
      throw new CalculatorError("not allowed in a calculation");
  }
}

/** Evaluate arithmetic (+ - * / // % ** ^, sqrt, abs, round): {kind: "int"|"float", v}. */
export function calculate(expression) {
  let text = expression.replaceAll("^", "**").replaceAll("×", "*").replaceAll("÷", "/");
  text = text.replace(TIMES_RE, "*");
  if (pyLen(text) > MAX_LENGTH) throw new CalculatorError("expression too long");
  let tree;
  try {
    tree = new Parser(tokenize(pyStrip(text))).parse();
  } catch (err) {
    // A stack too deep is a RangeError, like tools.py's RecursionError: skip, not escape.
    if (err instanceof SyntaxErr || err instanceof RangeError) {
      throw new CalculatorError(`not an arithmetic expression: ${JSON.stringify(expression)}`);
    }
    throw err;
  }
  // Like tools.py's MemoryError and RecursionError: a BigInt too large or a stack too deep is
  // a RangeError, which must skip the expression, not escape the tool.
  try {
    return evaluate(tree);
  } catch (err) {
    if (err instanceof RangeError) throw new CalculatorError(`cannot evaluate: ${err.message}`);
    throw err;
  }
}

// --- Python's number formatting ------------------------------------------------------------

// The exact decimal expansion of a finite double: {digits, point} with value 0.digits * 10^point.
function exactDecimal(x) {
  const view = new DataView(new ArrayBuffer(8));
  view.setFloat64(0, x);
  const hi = view.getUint32(0);
  const lo = view.getUint32(4);
  const exponent = (hi >>> 20) & 0x7ff;
  let mantissa = (BigInt(hi & 0xfffff) << 32n) | BigInt(lo);
  let e2;
  if (exponent === 0) {
    e2 = -1074;
  } else {
    mantissa |= 1n << 52n;
    e2 = exponent - 1075;
  }
  if (e2 >= 0) {
    const digits = (mantissa << BigInt(e2)).toString();
    return { digits, point: digits.length };
  }
  const digits = (mantissa * 5n ** BigInt(-e2)).toString();
  return { digits, point: digits.length + e2 };
}

/** `f"{x:.{precision}g}"` for a double, rounding half to even on the exact value. */
export function formatG(x, precision = 6) {
  if (Number.isNaN(x)) return "nan";
  if (!Number.isFinite(x)) return x < 0 ? "-inf" : "inf";
  const sign = x < 0 || Object.is(x, -0) ? "-" : "";
  const ax = Math.abs(x);
  if (ax === 0) return `${sign}0`;
  let { digits, point } = exactDecimal(ax);
  const firstNonZero = digits.search(/[1-9]/);
  point -= firstNonZero;
  digits = digits.slice(firstNonZero);
  let kept = digits.slice(0, precision).padEnd(precision, "0");
  const rest = digits.slice(precision);
  const restFirst = rest.length ? Number(rest[0]) : 0;
  const restTail = rest.length > 1 && /[1-9]/.test(rest.slice(1));
  const roundUp = restFirst > 5 || (restFirst === 5 && (restTail || Number(kept.at(-1)) % 2 === 1));
  if (roundUp) {
    const bumped = (BigInt(kept) + 1n).toString();
    if (bumped.length > precision) {
      kept = bumped.slice(0, precision);
      point += 1;
    } else {
      kept = bumped;
    }
  }
  const exp = point - 1;
  if (exp < -4 || exp >= precision) {
    const mantissa = stripZeros(`${kept[0]}.${kept.slice(1)}`);
    const e = Math.abs(exp).toString().padStart(2, "0");
    return `${sign}${mantissa}e${exp < 0 ? "-" : "+"}${e}`;
  }
  let fixed;
  if (exp >= 0) {
    fixed = `${kept.slice(0, exp + 1)}.${kept.slice(exp + 1)}`;
  } else {
    fixed = `0.${"0".repeat(-exp - 1)}${kept}`;
  }
  return sign + stripZeros(fixed);
}

function stripZeros(text) {
  return text.includes(".") ? text.replace(/0+$/, "").replace(/\.$/, "") : text;
}

/** tools.py's _format_number: whole floats as integers, everything else with `.6g`. */
export function formatNumber(value) {
  if (value.kind === "float" && Number.isInteger(value.v)) return BigInt(value.v).toString();
  return formatG(toFloat(value));
}

/** Evaluate every arithmetic expression found in the question. */
export function calculatorTool(question) {
  if (question.length > MAX_QUESTION_LENGTH && pyLen(question) > MAX_QUESTION_LENGTH) return [];
  const results = [];
  for (const match of question.matchAll(EXPR_RE)) {
    if (match[1] === undefined) continue; // the rest of a run that holds no expression
    const expr = pyStrip(match[1]);
    if (!OPERATOR_RE.test(expr) || NUMBER_ONLY_RE.test(expr)) continue;
    try {
      results.push(`calculator: ${expr} = ${formatNumber(calculate(expr))}`);
    } catch (err) {
      if (!(err instanceof CalculatorError)) throw err;
    }
  }
  return results;
}

// --- search --------------------------------------------------------------------------------

// Words too common to say what a question is about.
const STOP_WORDS = new Set(
  (
    "a an and are as at be by do does for from how i in is it its of on or the to was what when " +
    "where which who why will with"
  ).split(" "),
);

function words(text) {
  return (text.toLowerCase().match(/[a-z0-9]+/g) ?? []).filter((w) => !STOP_WORDS.has(w));
}

/** Rank documents by summed inverse document frequency of the query words they contain. */
export function search(query, documents, topK = 1) {
  const queryWords = [...new Set(words(query))];
  const docWords = documents.map((d) => new Set(words(`${d.title} ${d.text}`)));
  const scores = docWords.map((set) => {
    let score = 0;
    for (const word of queryWords) {
      if (!set.has(word)) continue;
      const frequency = docWords.filter((w) => w.has(word)).length;
      score += Math.log((1 + documents.length) / frequency);
    }
    return score;
  });
  // Python sorts (score, -index) descending: higher score first, then the earlier document.
  const ranked = documents.map((_, i) => i).sort((a, b) => scores[b] - scores[a] || a - b);
  return ranked
    .slice(0, topK)
    .filter((i) => scores[i] > 0)
    .map((i) => documents[i]);
}

export function searchTool(question, documents) {
  return search(question, documents).map((d) => `search: ${d.title}: ${d.text}`);
}

export const TOOLS = {
  calculator: (question) => calculatorTool(question),
  search: (question, documents) => searchTool(question, documents),
};

/** Results of each named tool, as lines of text; `documents` is data/documents.json. */
export function runTools(names, question, documents) {
  const lines = [];
  for (const name of names) {
    if (!(name in TOOLS)) throw new Error(`unknown tool ${JSON.stringify(name)}`);
    lines.push(...TOOLS[name](question, documents));
  }
  return lines;
}

/** The documents for the search tool (web/data/documents.json, written by web_assets.py). */
export async function loadDocuments(url = new URL("../data/documents.json", import.meta.url)) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}
