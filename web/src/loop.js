// The latent loop in the browser; mirrors mlcpatch/loop/orchestrator.py function by function.
//
// For each round, for each agent in pattern order:
// 1. build its input from its template; what the agents it receives from handed over goes in
//    the `{latent}` slot (vectors in latent mode, text in text mode);
// 2. start a fresh sequence and run the input: getLastHidden (latent) or prefill (text);
// 3. latent: m thoughts, h -> inner(h) -> decodeLastHidden -> h; text: generate up to T tokens;
// 4. hand over inner(L) through each receiver's outer link (latent) or the text (text mode);
// 5. the last agent of the last round decodes the answer with prefill/decode and the sampler.
// Same step order, same metric definitions and same greedy sampling as the Python loop, so for
// the same artifacts, links, question and settings both give the same text and counts.
//
// Agents run on Engine objects (engine.js); links come from links.js (a LinkSet).

import { handoffs } from "./patterns.js";
import { latentInput, render, textInput } from "./prompts.js";
import { pyStrip } from "./pystr.js";
import { makeRng, sampleToken } from "./sampling.js";
import { runTools } from "./tools.js";

export const MODES = ["latent", "text"];

/** Thrown when shouldStop() says so (Python raises InterruptedError("run stopped")). */
export class StopError extends Error {
  constructor(message = "run stopped") {
    super(message);
    this.name = "StopError";
  }
}

export class Settings {
  constructor({
    rounds = 2,
    latentSteps = 8,
    maxNewTokens = 64, // the final answer
    textTokens = 48, // each intermediate agent in text mode
    temperature = 0.0, // 0 = greedy
    topP = 1.0,
    seed = 0,
  } = {}) {
    Object.assign(this, { rounds, latentSteps, maxNewTokens, textTokens, temperature, topP, seed });
    for (const key of ["rounds", "latentSteps", "maxNewTokens", "textTokens", "seed"]) {
      if (!Number.isInteger(this[key])) throw new Error(`${key} must be an integer`);
    }
    if (this.rounds < 1) throw new Error("rounds must be at least 1");
    if (this.latentSteps < 1) throw new Error("latent steps must be at least 1");
    if (this.maxNewTokens < 1 || this.textTokens < 1) {
      throw new Error("token budgets must be at least 1");
    }
  }
}

/** One agent's turn in one round. */
export class AgentStep {
  constructor(round, agent, inputPositions, toolResults = []) {
    this.round = round;
    this.agent = agent;
    this.inputPositions = inputPositions; // prompt tokens + handed-over vectors
    this.latentSteps = 0;
    this.tokensGenerated = 0; // sampled tokens only
    this.positionsProcessed = inputPositions; // every position the model ran over
    this.seconds = 0;
    this.bytesHanded = 0; // what this agent handed to the next ones
    this.text = ""; // generated text (text mode, and the final answer)
    this.toolResults = toolResults;
  }

  /** The Python AgentStep's fields (dataclasses.asdict), same names. */
  toJSON() {
    return {
      round: this.round,
      agent: this.agent,
      input_positions: this.inputPositions,
      latent_steps: this.latentSteps,
      tokens_generated: this.tokensGenerated,
      positions_processed: this.positionsProcessed,
      seconds: this.seconds,
      bytes_handed: this.bytesHanded,
      text: this.text,
      tool_results: this.toolResults,
    };
  }
}

const ROUND_KEYS = ["tokens_generated", "positions_processed", "latent_steps", "bytes_handed", "seconds"];

export class RunResult {
  constructor(mode, pattern, question, answer, seconds, steps) {
    Object.assign(this, { mode, pattern, question, answer, seconds, steps });
  }

  /** Sum of one AgentStep field over all steps (Python's field name). */
  total(name) {
    return this.steps.reduce((sum, step) => sum + step.toJSON()[name], 0);
  }

  get tokensGenerated() {
    return this.total("tokens_generated");
  }

  perRound() {
    const rounds = new Map();
    for (const step of this.steps) {
      if (!rounds.has(step.round)) {
        rounds.set(step.round, { round: step.round, ...Object.fromEntries(ROUND_KEYS.map((k) => [k, 0])) });
      }
      const row = rounds.get(step.round);
      const values = step.toJSON();
      for (const key of ROUND_KEYS) row[key] += values[key];
    }
    return [...rounds.keys()].sort((a, b) => a - b).map((r) => rounds.get(r));
  }

  /** Python's RunResult.to_json(), same keys. */
  toJSON() {
    return {
      mode: this.mode,
      pattern: this.pattern,
      question: this.question,
      answer: this.answer,
      tokens_generated: this.tokensGenerated,
      positions_processed: this.total("positions_processed"),
      latent_steps: this.total("latent_steps"),
      bytes_handed: this.total("bytes_handed"),
      seconds: this.seconds,
      rounds: this.perRound(),
      steps: this.steps.map((s) => s.toJSON()),
    };
  }
}

async function readBack(tensor) {
  try {
    return await tensor.toArray();
  } finally {
    tensor.dispose();
  }
}

/**
 * Prefill then sample up to `budget` tokens: {tokens (incl. a stop token), text}.
 * onToken(count, partial) after each token; partial() decodes the text so far (streaming).
 */
async function generate(engine, embeds, budget, settings, rng, check, onToken) {
  const stops = new Set(engine.eosTokenIds);
  let values = await readBack(engine.prefill(embeds.data));
  const tokens = [];
  for (let step = 0; step < budget; step++) {
    const token = sampleToken(values, {
      temperature: settings.temperature,
      topP: settings.topP,
      greedy: settings.temperature <= 0,
      rng,
    });
    tokens.push(token);
    onToken(tokens.length, () => engine.decodeTokens(tokens.filter((t) => !stops.has(t)), { skipSpecialTokens: true }));
    if (stops.has(token)) break;
    if (step + 1 < budget) {
      check();
      const embed = engine.embed([token]);
      try {
        values = await readBack(engine.decode(embed));
      } finally {
        embed.dispose();
      }
    }
  }
  const textIds = tokens.filter((t) => !stops.has(t));
  const text = pyStrip(engine.decodeTokens(textIds, { skipSpecialTokens: true }));
  return { tokens, text };
}

/** Python's _check_system: agents follow the pattern; every link fits the models' sizes. */
export function checkSystem(pattern, agents, links) {
  const names = agents.map((a) => a.role.name);
  if (names.join("\0") !== pattern.agents.map((r) => r.name).join("\0")) {
    throw new Error("agents must follow the pattern's order");
  }
  if (links == null) return;
  const lookup = (get, what) => {
    try {
      return get();
    } catch {
      throw new Error(what);
    }
  };
  for (const agent of agents) {
    const name = agent.role.name;
    const link = lookup(() => links.inner(name), `no inner link for agent ${name}`);
    const d = agent.engine.hiddenSize;
    if (link.inDim !== d || link.outDim !== d) {
      throw new Error(
        `inner link ${link.spec.name}: maps ${link.inDim}->${link.outDim}, but agent ` +
          `${name}'s model has hidden size ${d}`,
      );
    }
  }
  const sizes = Object.fromEntries(agents.map((a) => [a.role.name, a.engine.hiddenSize]));
  for (const [sender, receiver] of handoffs(pattern)) {
    const link = lookup(() => links.outer(sender, receiver), `no outer link for ${sender} -> ${receiver}`);
    const want = [sizes[sender], sizes[receiver]];
    if (link.inDim !== want[0] || link.outDim !== want[1]) {
      throw new Error(
        `outer link ${link.spec.name}: maps ${link.inDim}->${link.outDim}, but ${sender} -> ` +
          `${receiver} needs ${want[0]}->${want[1]}`,
      );
    }
  }
}

function concatVectors(list, hidden) {
  if (!list.length) return null;
  const data = new Float32Array(list.reduce((n, v) => n + v.length, 0));
  let offset = 0;
  for (const v of list) {
    data.set(v, offset);
    offset += v.length;
  }
  return { data, rows: data.length / hidden };
}

/**
 * One full run of the system in `mode` ("latent" or "text").
 *
 * agents: [{role, engine}] in pattern order; links: a LinkSet (latent mode).
 * options: progress(event, round, agent, detail) with events "agent" ({final}), "latent"
 * ({step, of}), "token" ({count, of, text: the text so far, for streaming}) and "step"
 * ({step: AgentStep}); shouldStop() checked before every agent (as in Python) and between
 * model calls; documents: data/documents.json for the tools.
 */
export async function run(mode, pattern, agents, question, settings, links = null, options = {}) {
  if (!MODES.includes(mode)) throw new Error(`mode must be one of ${MODES.join(", ")}`);
  if (mode === "latent" && links == null) {
    throw new Error("latent mode needs links (a link file)");
  }
  checkSystem(pattern, agents, mode === "latent" ? links : null);
  const notify = options.progress ?? (() => {});
  const check = () => {
    if (options.shouldStop?.()) throw new StopError();
  };
  const documents = options.documents ?? [];
  const rng = makeRng(settings.seed);
  const handed = new Map(); // sender -> its latest thoughts ({data, rows}) or text
  const steps = [];
  let answer = "";
  const start = performance.now();
  for (let rnd = 1; rnd <= settings.rounds; rnd++) {
    for (const [index, agent] of agents.entries()) {
      check();
      const { role, engine } = agent;
      const final = rnd === settings.rounds && index === agents.length - 1;
      notify("agent", rnd, role.name, { final });
      const began = performance.now();
      const toolResults = role.tools.length ? runTools(role.tools, question, documents) : [];
      const prompt = render(engine, role, question, toolResults.join("\n") || "none");
      const senders = role.receives.filter((s) => handed.has(s));
      let embeds;
      if (mode === "latent") {
        const vectors = senders.map((s) => {
          const thoughts = handed.get(s);
          return links.outer(s, role.name).applyRows(thoughts.data, thoughts.rows);
        });
        embeds = await latentInput(engine, prompt, concatVectors(vectors, engine.hiddenSize));
      } else {
        const text = senders.map((s) => `[${s}] ${handed.get(s)}`).join("\n\n");
        embeds = await textInput(engine, prompt, text);
      }
      engine.reset();
      const step = new AgentStep(rnd, role.name, embeds.rows, toolResults);
      if (final || mode === "text") {
        const budget = final ? settings.maxNewTokens : settings.textTokens;
        const { tokens, text } = await generate(engine, embeds, budget, settings, rng, check, (count, partial) =>
          notify("token", rnd, role.name, { count, of: budget, text: partial() }),
        );
        step.tokensGenerated = tokens.length;
        step.positionsProcessed += Math.max(tokens.length - 1, 0); // the last is never fed back
        step.text = text;
        if (final) {
          answer = text;
        } else {
          handed.set(role.name, text);
          const receivers = agents.filter((a) => a.role.receives.includes(role.name)).length;
          step.bytesHanded = new TextEncoder().encode(text).length * receivers;
        }
      } else {
        const inner = links.inner(role.name);
        const d = engine.hiddenSize;
        const hidden = await readBack(engine.getLastHidden(embeds.data));
        let h = hidden.slice(hidden.length - d);
        const thoughts = new Float32Array(settings.latentSteps * d);
        for (let i = 0; i < settings.latentSteps; i++) {
          if (i > 0) check();
          h = await readBack(engine.decodeLastHidden(inner.apply(h)));
          thoughts.set(h, i * d);
          notify("latent", rnd, role.name, { step: i + 1, of: settings.latentSteps });
        }
        step.latentSteps = settings.latentSteps;
        step.positionsProcessed += settings.latentSteps;
        handed.set(role.name, { data: inner.applyRows(thoughts, settings.latentSteps), rows: settings.latentSteps });
        step.bytesHanded = agents
          .filter((a) => a.role.receives.includes(role.name))
          .reduce((sum, a) => sum + settings.latentSteps * a.engine.hiddenSize * 4, 0);
      }
      step.seconds = (performance.now() - began) / 1000;
      steps.push(step);
      notify("step", rnd, role.name, { step });
    }
  }
  return new RunResult(mode, pattern.name, question, answer, (performance.now() - start) / 1000, steps);
}

/** Latent against text: the figures the paper reports (RunResults or their JSON). */
export function compare(latent, text) {
  const tokens = (r) => r.tokensGenerated ?? r.tokens_generated;
  const reduction = tokens(text) ? 1 - tokens(latent) / tokens(text) : 0;
  return {
    speedup: latent.seconds ? text.seconds / latent.seconds : Infinity,
    token_reduction: reduction,
    latent_tokens: tokens(latent),
    text_tokens: tokens(text),
  };
}
