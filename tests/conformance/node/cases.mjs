// The official openai Node SDK against a wattwise server: runs every named case, prints one JSON object
// {case: result}. A case that throws reports {error: {name, status, ...}} instead of stopping the rest.
//
//   node cases.mjs '{"base": "http://127.0.0.1:8000/v1", "marker": "mk1", "model": "fake", "cases": ["plain"]}'
import OpenAI from "openai";

const args = JSON.parse(process.argv[2]);
const client = new OpenAI({ baseURL: args.base, apiKey: "sk-conformance", maxRetries: 0, timeout: 30000 });
const tool = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The current weather in a city.",
    parameters: {
      type: "object",
      properties: { city: { type: "string" } },
      required: ["city"],
      additionalProperties: false,
    },
  },
};
// A fixed prompt (args.prompt, for the local model) or a marked one the Python side can find upstream.
const ask = (tag, text = "Say something.") =>
  [{ role: "user", content: args.prompt ?? `${args.marker}-${tag} ${text}` }];
const model = args.model ?? "fake";
const limits = args.max_tokens ? { max_tokens: args.max_tokens, temperature: 0 } : {};

async function collect(stream) {
  const out = { content: "", refusal: "", reasoning: "", finish: [], chunks: 0, ids: new Set(), usage: null,
                fingerprints: new Set(), tool_pieces: [], logprobs: [] };
  for await (const chunk of stream) {
    out.chunks += 1;
    out.ids.add(chunk.id);
    if (chunk.system_fingerprint) out.fingerprints.add(chunk.system_fingerprint);
    if (chunk.usage) out.usage = chunk.usage;
    for (const choice of chunk.choices) {
      const d = choice.delta ?? {};
      out.content += d.content ?? "";
      out.refusal += d.refusal ?? "";
      out.reasoning += d.reasoning_content ?? "";
      for (const piece of d.tool_calls ?? []) out.tool_pieces.push(piece);
      for (const lp of choice.logprobs?.content ?? []) out.logprobs.push(lp);
      if (choice.finish_reason) out.finish.push(choice.finish_reason);
    }
  }
  return { ...out, ids: [...out.ids], fingerprints: [...out.fingerprints] };
}

function toolCall(pieces) {
  const head = pieces[0];
  const argsText = pieces.map((p) => p.function?.arguments ?? "").join("");
  return { id: head.id, type: head.type, name: head.function?.name, arguments: argsText };
}

const cases = {
  async plain() {
    const { data, response } = await client.chat.completions
      .create({ model, messages: ask("plain"), user: `user-${args.marker}`, ...limits })
      .withResponse();
    return { reply: data, cost: response.headers.get("x-wattwise-cost-usd"),
             request_id: response.headers.get("x-wattwise-request-id") };
  },
  async stream() {
    const stream = await client.chat.completions.create({
      model, messages: ask("stream"), stream: true, stream_options: { include_usage: true }, ...limits });
    return collect(stream);
  },
  async tools() {
    const messages = ask("tools", "What is the weather in Paris?");
    const first = await client.chat.completions.create({ model, messages, tools: [tool] });
    const message = first.choices[0].message;
    const call = message.tool_calls[0];
    messages.push(message, { role: "tool", tool_call_id: call.id, content: "18C and sunny" });
    const final = await client.chat.completions.create({ model, messages, tools: [tool] });
    return { first: first.choices[0], final: final.choices[0].message.content };
  },
  async tools_stream() {
    const messages = ask("tools_stream", "What is the weather in Paris?");
    const first = await collect(await client.chat.completions.create({ model, messages, tools: [tool], stream: true }));
    const call = toolCall(first.tool_pieces);
    messages.push({ role: "assistant", content: null, tool_calls: [
      { id: call.id, type: "function", function: { name: call.name, arguments: call.arguments } }] });
    messages.push({ role: "tool", tool_call_id: call.id, content: "rainy, 9C" });
    const final = await collect(await client.chat.completions.create({ model, messages, tools: [tool], stream: true }));
    return { first, call, final: final.content };
  },
  async structured() {
    const reply = await client.chat.completions.create({
      model, messages: ask("structured"),
      response_format: { type: "json_schema", json_schema: { name: "city", strict: true, schema: {
        type: "object", additionalProperties: false, required: ["name", "population"],
        properties: { name: { type: "string" }, population: { type: "integer" } } } } },
    });
    return { parsed: JSON.parse(reply.choices[0].message.content) };
  },
  async logprobs() {
    const reply = await client.chat.completions.create({ model, messages: ask("logprobs"), logprobs: true,
                                                          top_logprobs: 2 });
    const streamed = await collect(await client.chat.completions.create({
      model, messages: ask("logprobs", "streamed"), logprobs: true, top_logprobs: 2, stream: true }));
    return { content: reply.choices[0].logprobs.content, streamed: streamed.logprobs };
  },
  async error400() {
    await client.chat.completions.create({ model, messages: ask("error400", "[[400]]") });
    return { unexpected: "no error" };
  },
  async error429() {
    await client.chat.completions.create({ model, messages: ask("error429", "[[429]]") });
    return { unexpected: "no error" };
  },
  async reasoning() {
    const { data, response } = await client.chat.completions
      .create({ model: "thinker", messages: ask("reasoning"), max_completion_tokens: 64 })
      .withResponse();
    const streamed = await collect(await client.chat.completions.create({
      model: "thinker", messages: ask("reasoning", "streamed"), max_completion_tokens: 64, stream: true }));
    return { usage: data.usage, cost: response.headers.get("x-wattwise-cost-usd"), streamed };
  },
};

const results = {};
for (const name of args.cases) {
  try {
    results[name] = await cases[name]();
  } catch (err) {
    results[name] = { error: {
      name: err.constructor?.name, message: String(err.message ?? err), status: err.status ?? null,
      bad_request: err instanceof OpenAI.BadRequestError, rate_limit: err instanceof OpenAI.RateLimitError,
      body: err.error ?? null,
      headers: err.headers ? Object.fromEntries(err.headers.entries ? err.headers.entries() : []) : null,
    } };
  }
}
process.stdout.write(JSON.stringify(results));
