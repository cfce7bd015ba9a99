// Picking the next token from logits; mirrors mlcpatch.runtime.sample.

/**
 * A seeded generator of numbers in [0, 1) (mulberry32: small, good enough for sampling), or
 * Math.random when `seed` is null. Sampled runs cannot reproduce numpy's generator, so only
 * greedy runs match the Python side.
 */
export function makeRng(seed) {
  if (seed == null) return Math.random;
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Index of the largest value (the first one on ties, like numpy.argmax). */
export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) {
    if (values[i] > values[best]) best = i;
  }
  return best;
}

/**
 * Next token: argmax when greedy (or temperature <= 0), else nucleus (top-p) sampling at
 * `temperature`, drawing with `rng()` in [0, 1).
 */
export function sampleToken(logits, { temperature = 1, topP = 1, greedy = false, rng = Math.random }) {
  if (greedy || temperature <= 0) return argmax(logits);
  const n = logits.length;
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, logits[i] / temperature);
  const probs = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) {
    probs[i] = Math.exp(logits[i] / temperature - max);
    sum += probs[i];
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => probs[b] - probs[a]);
  // Keep the smallest prefix of tokens, by probability, whose mass reaches topP.
  const kept = [];
  let mass = 0;
  for (const i of order) {
    kept.push(i);
    mass += probs[i] / sum;
    if (mass >= topP) break;
  }
  const keptMass = kept.reduce((acc, i) => acc + probs[i], 0);
  let r = rng() * keptMass;
  for (const i of kept) {
    r -= probs[i];
    if (r < 0) return i;
  }
  return kept[kept.length - 1];
}
