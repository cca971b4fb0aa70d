/**
 * Readers of the API's streamed answers: NDJSON lines and server-sent events.
 *
 * @module
 */

/** One server-sent event: its `event` type (default `message`), `id` and joined `data` lines. */
export interface ServerSentEvent {
  event: string;
  id: string | undefined;
  data: string;
}

/** The lines of a body, decoded as UTF-8 (a character is never split across two chunks). */
async function* lines(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of body) {
    buffered += decoder.decode(chunk, { stream: true });
    let newline: number;
    while ((newline = buffered.indexOf("\n")) >= 0) {
      yield buffered.slice(0, newline).replace(/\r$/, "");
      buffered = buffered.slice(newline + 1);
    }
  }
  buffered += decoder.decode();
  if (buffered) yield buffered;
}

/** Each non-empty line of an `application/x-ndjson` body, parsed as JSON. */
export async function* ndjson<T>(body: ReadableStream<Uint8Array> | null): AsyncGenerator<T> {
  if (body === null) return;
  for await (const line of lines(body)) {
    if (line.trim()) yield JSON.parse(line) as T;
  }
}

/** The events of a `text/event-stream` body; comments (keep-alives) are skipped. */
export async function* serverSentEvents(body: ReadableStream<Uint8Array> | null): AsyncGenerator<ServerSentEvent> {
  if (body === null) return;
  let event = "";
  let id: string | undefined;
  let data: string[] = [];
  for await (const line of lines(body)) {
    if (line === "") {
      if (data.length > 0) yield { event: event || "message", id, data: data.join("\n") };
      event = "";
      id = undefined;
      data = [];
      continue;
    }
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
}
