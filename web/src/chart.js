// Bars of tokens generated and seconds per round, latent next to text: plain SVG, no library.

const SVG = "http://www.w3.org/2000/svg";
const COLORS = { text: "#c0632a", latent: "#2a6fc0" };
const PANELS = [
  { key: "tokens_generated", title: "Tokens generated", format: (v) => String(v) },
  { key: "seconds", title: "Seconds", format: (v) => v.toFixed(2) },
];
const W = 320;
const H = 180;
const PAD = { left: 36, right: 8, top: 24, bottom: 28 };

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text != null) node.textContent = text;
  return node;
}

function panel({ key, title, format }, results) {
  const modes = ["text", "latent"].filter((m) => results[m]);
  const rounds = [...new Set(modes.flatMap((m) => results[m].rounds.map((r) => r.round)))].sort((a, b) => a - b);
  const value = (mode, round) => results[mode].rounds.find((r) => r.round === round)?.[key] ?? 0;
  const max = Math.max(1e-9, ...modes.flatMap((m) => rounds.map((r) => value(m, r))));
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "data-metric": key });
  svg.append(el("title", {}, `${title} per round`));
  svg.append(el("text", { x: PAD.left, y: 14, class: "chart-title" }, title));
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  const baseY = PAD.top + plotH;
  svg.append(el("line", { x1: PAD.left, y1: baseY, x2: W - PAD.right, y2: baseY, class: "axis" }));
  svg.append(el("text", { x: PAD.left - 4, y: PAD.top + 8, "text-anchor": "end", class: "tick" }, format(max)));
  const group = plotW / Math.max(rounds.length, 1);
  const barW = Math.min(28, (group * 0.8) / Math.max(modes.length, 1));
  rounds.forEach((round, i) => {
    const x0 = PAD.left + i * group + (group - barW * modes.length) / 2;
    modes.forEach((mode, j) => {
      const v = value(mode, round);
      const h = (v / max) * plotH;
      const bar = el("rect", {
        x: x0 + j * barW,
        y: baseY - h,
        width: barW - 2,
        height: Math.max(h, 0.5),
        fill: COLORS[mode],
        "data-mode": mode,
        "data-round": round,
        "data-value": v,
      });
      bar.append(el("title", {}, `${mode}, round ${round}: ${format(v)}`));
      svg.append(bar);
    });
    svg.append(el("text", { x: x0 + (barW * modes.length) / 2, y: baseY + 14, "text-anchor": "middle", class: "tick" }, `R${round}`));
  });
  modes.forEach((mode, j) => {
    const x = W - PAD.right - 110 + j * 56;
    svg.append(el("rect", { x, y: 5, width: 10, height: 10, fill: COLORS[mode] }));
    svg.append(el("text", { x: x + 13, y: 14, class: "tick" }, mode));
  });
  return svg;
}

/** Draw into `container` from {text?, latent?} (RunResult JSON objects). */
export function renderChart(container, results) {
  container.replaceChildren(...PANELS.map((p) => panel(p, results)));
}
