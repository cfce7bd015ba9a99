// A small, safe Markdown renderer for model answers: it builds DOM nodes with createElement and
// text nodes only, so nothing in the text is ever parsed as HTML (a "<img onerror=…>" in an
// answer stays visible text). Supports paragraphs (single newlines kept as line breaks),
// **bold** / __bold__, *italic* / _italic_, `code`, fenced code blocks (``` or ~~~, also
// unclosed while an answer streams), bullet and numbered lists, and # headings (shown bold).
// Links, images and raw HTML are not rendered: they show as the text they are.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const BULLET = /^ {0,3}([-*+])\s+(.*)$/;
const NUMBERED = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;

// Inline spans, earliest match first: code, bold, italic. Italic markers count only at word
// boundaries, so snake_case_names and 6*7*2 stay as they are.
const INLINE = [
  { re: /`([^`\n]+)`/, tag: "code", literal: true },
  { re: /\*\*(?=\S)([\s\S]*?\S)\*\*/, tag: "strong" },
  { re: /(?<![\p{L}\p{N}_])__(?=\S)([\s\S]*?\S)__(?![\p{L}\p{N}_])/u, tag: "strong" },
  { re: /(?<![\p{L}\p{N}*])\*(?=[^\s*])([\s\S]*?[^\s*])\*(?![\p{L}\p{N}])/u, tag: "em" },
  { re: /(?<![\p{L}\p{N}_])_(?=[^\s_])([\s\S]*?[^\s_])_(?![\p{L}\p{N}_])/u, tag: "em" },
];

/** Inline Markdown of `text` appended to `parent` (a DOM node); line breaks become <br>. */
export function appendInline(parent, text) {
  const doc = parent.ownerDocument;
  let rest = text;
  while (rest) {
    let best = null;
    for (const rule of INLINE) {
      const m = rule.re.exec(rest);
      if (m && (best === null || m.index < best.m.index)) best = { m, rule };
    }
    if (!best) break;
    appendText(parent, rest.slice(0, best.m.index));
    const node = doc.createElement(best.rule.tag);
    if (best.rule.literal) node.textContent = best.m[1];
    else appendInline(node, best.m[1]);
    parent.append(node);
    rest = rest.slice(best.m.index + best.m[0].length);
  }
  appendText(parent, rest);
  return parent;
}

function appendText(parent, text) {
  const lines = text.split("\n");
  lines.forEach((line, i) => {
    if (i > 0) parent.append(parent.ownerDocument.createElement("br"));
    if (line) parent.append(parent.ownerDocument.createTextNode(line));
  });
}

/** Inline Markdown as a fragment (for short texts such as error messages with `code`). */
export function renderInline(text, doc = document) {
  return appendInline(doc.createDocumentFragment(), String(text ?? ""));
}

/** Block and inline Markdown of `text` as a DocumentFragment of safe elements. */
export function renderMarkdown(text, doc = document) {
  const fragment = doc.createDocumentFragment();
  const lines = String(text ?? "").replace(/\r\n?/g, "\n").split("\n");
  let paragraph = [];
  let list = null; // {element, ordered}
  let item = null; // the <li> whose continuation lines are collected
  let itemText = [];
  const el = (tag) => doc.createElement(tag);

  const flushItem = () => {
    if (item) appendInline(item, itemText.join("\n"));
    item = null;
    itemText = [];
  };
  const flushList = () => {
    flushItem();
    list = null;
  };
  const flushParagraph = () => {
    if (paragraph.length) fragment.append(appendInline(el("p"), paragraph.join("\n")));
    paragraph = [];
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      flushParagraph();
      flushList();
      const marker = fence[1];
      const body = [];
      i++;
      while (i < lines.length && !isClosingFence(lines[i], marker)) body.push(lines[i++]);
      const pre = el("pre");
      const code = el("code");
      if (fence[2]) code.dataset.lang = fence[2];
      code.textContent = body.join("\n");
      pre.append(code);
      fragment.append(pre);
      continue;
    }
    if (!line.trim()) {
      flushParagraph();
      // A blank line ends the item's text; the list goes on if another item follows.
      flushItem();
      const next = lines.slice(i + 1).find((l) => l.trim());
      if (list && !(next && (list.ordered ? NUMBERED : BULLET).test(next))) flushList();
      continue;
    }
    const bullet = BULLET.exec(line);
    const numbered = bullet ? null : NUMBERED.exec(line);
    if ((bullet || numbered) && !RULE.test(line)) {
      flushParagraph();
      const ordered = Boolean(numbered);
      if (!list || list.ordered !== ordered) {
        flushList();
        list = { element: el(ordered ? "ol" : "ul"), ordered };
        if (ordered && Number(numbered[1]) !== 1) list.element.start = Number(numbered[1]);
        fragment.append(list.element);
      }
      flushItem();
      item = el("li");
      list.element.append(item);
      itemText = [(bullet ?? numbered)[2]];
      continue;
    }
    if (item && /^\s/.test(line)) {
      itemText.push(line.trim());
      continue;
    }
    if (list) flushList();
    const heading = HEADING.exec(line);
    if (heading) {
      flushParagraph();
      const p = el("p");
      p.className = `md-heading md-h${heading[1].length}`;
      p.append(appendInline(el("strong"), heading[2]));
      fragment.append(p);
      continue;
    }
    if (RULE.test(line) && !paragraph.length) {
      fragment.append(el("hr"));
      continue;
    }
    paragraph.push(line);
  }
  flushParagraph();
  flushList();
  return fragment;
}

function isClosingFence(line, marker) {
  const trimmed = line.trim();
  return trimmed.length >= marker.length && trimmed === marker[0].repeat(trimmed.length);
}

/** Replace `element`'s children with the rendered `text`; keeps the source on the element. */
export function setMarkdown(element, text) {
  element.replaceChildren(renderMarkdown(text, element.ownerDocument));
  element.dataset.markdown = text;
}
