// Python string behaviour the loop depends on, where JavaScript's differs: which characters
// are whitespace (str.strip, re's \s) and str.format's {field} syntax. Prompts built with the
// JS versions must equal the Python ones character for character.

// Python's str.isspace() set. JS's \s has U+FEFF and lacks U+001C..U+001F and U+0085.
export const PY_SPACE =
  "\\t\\n\\v\\f\\r \\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const SPACE_RE = new RegExp(`[${PY_SPACE}]`, "u");

export function isPySpace(char) {
  return SPACE_RE.test(char);
}

/** str.lstrip() */
export function pyLstrip(text) {
  let start = 0;
  while (start < text.length && isPySpace(text[start])) start++;
  return text.slice(start);
}

/** str.strip() */
export function pyStrip(text) {
  let end = text.length;
  while (end > 0 && isPySpace(text[end - 1])) end--;
  return pyLstrip(text.slice(0, end));
}

/**
 * str.format(**values) for templates with plain `{name}` fields and `{{`/`}}` escapes (what
 * pattern templates use); conversions, format specs and positional fields are refused.
 */
export function pyFormat(template, values) {
  let out = "";
  let i = 0;
  while (i < template.length) {
    const c = template[i];
    if ((c === "{" || c === "}") && template[i + 1] === c) {
      out += c;
      i += 2;
      continue;
    }
    if (c === "}") throw new Error("Single '}' encountered in format string");
    if (c !== "{") {
      out += c;
      i++;
      continue;
    }
    const end = template.indexOf("}", i);
    if (end < 0) throw new Error("Single '{' encountered in format string");
    const field = template.slice(i + 1, end);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(field)) {
      throw new Error(`template field {${field}} is not a plain name`);
    }
    if (!(field in values)) throw new Error(`template needs a value for {${field}}`);
    out += values[field];
    i = end + 1;
  }
  return out;
}
