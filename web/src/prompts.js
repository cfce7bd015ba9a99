// Building an agent's input; mirrors mlcpatch/loop/prompts.py.
//
// The template is rendered once with a marker in the `{latent}` slot. Latent mode embeds the
// text before and after the marker and puts the handed-over vectors between; text mode puts
// the handed-over text in place of the marker and tokenizes the whole.

import { pyFormat, pyLstrip, pyStrip } from "./pystr.js";

export const MARKER = "\u2063LATENT\u2063"; // invisible separators: never in a real prompt

/** The agent's prompt, chat-templated, with MARKER where handed-over content goes. */
export function render(engine, role, question, tools) {
  const content = pyFormat(role.template, { question, latent: MARKER, tools });
  if (!engine.chatTemplate) return pyLstrip(`${role.system}\n\n${content}\n`);
  const messages = [{ role: "user", content }];
  if (role.system) messages.unshift({ role: "system", content: role.system });
  try {
    return engine.applyChatTemplate(messages);
  } catch {
    // Templates that reject a system turn: fold it into the user turn.
    const merged = [{ role: "user", content: pyStrip(`${role.system}\n\n${content}`) }];
    return engine.applyChatTemplate(merged);
  }
}

export function idsOf(engine, text) {
  return text ? engine.encode(text) : [];
}

/** Embeddings of token ids, read back to the CPU: a Float32Array [ids.length * hidden]. */
export async function embedRows(engine, ids) {
  const tensor = engine.embed(ids);
  try {
    return await tensor.toArray();
  } finally {
    tensor.dispose();
  }
}

function concatRows(parts, hidden) {
  const total = parts.reduce((n, p) => n + p.length, 0);
  const data = new Float32Array(total);
  let offset = 0;
  for (const part of parts) {
    data.set(part, offset);
    offset += part.length;
  }
  return { data, rows: total / hidden };
}

/**
 * Embeddings of the prompt with `vectors` ({data, rows}, in this agent's space) at the
 * marker: {data: Float32Array, rows}.
 */
export async function latentInput(engine, prompt, vectors) {
  const at = prompt.indexOf(MARKER);
  const before = at < 0 ? prompt : prompt.slice(0, at);
  const after = at < 0 ? "" : prompt.slice(at + MARKER.length);
  const beforeIds = idsOf(engine, before);
  const afterIds = idsOf(engine, after);
  const parts = [];
  if (beforeIds.length) parts.push(await embedRows(engine, beforeIds));
  if (vectors && vectors.rows) parts.push(vectors.data);
  if (afterIds.length) parts.push(await embedRows(engine, afterIds));
  return concatRows(parts, engine.hiddenSize);
}

export async function textInput(engine, prompt, handed) {
  // split/join, not replace(): `$&` and friends in generated text must stay literal.
  const ids = idsOf(engine, prompt.split(MARKER).join(handed));
  return { data: await embedRows(engine, ids), rows: ids.length };
}
