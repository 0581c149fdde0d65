// Server-Sent Events over fetch(): EventSource cannot send an Authorization header, so the
// stream is read as bytes and parsed here (the WHATWG event-stream format). It reconnects
// with `?after=<last event id>` so nothing is missed or repeated.

/**
 * Parses event-stream text incrementally. `feed(chunk)` returns the complete events in it:
 * {id, event, data}. Comments (keep-alives) are ignored.
 */
export class SseParser {
  constructor() {
    this.buffer = '';
    this.reset();
  }

  reset() {
    this.id = null;
    this.event = '';
    this.data = [];
  }

  feed(chunk) {
    this.buffer += chunk;
    const out = [];
    let nl;
    while ((nl = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buffer.slice(0, nl);
      const skip = this.buffer.startsWith('\r\n', nl) ? 2 : 1;
      this.buffer = this.buffer.slice(nl + skip);
      if (line === '') {
        if (this.data.length || this.id !== null) {
          out.push({ id: this.id, event: this.event || 'message', data: this.data.join('\n') });
        }
        this.reset();
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'data') this.data.push(value);
      else if (field === 'event') this.event = value;
      else if (field === 'id') this.id = value;
    }
    return out;
  }
}

/**
 * Follows `url` until `stop()`: calls onOpen() each time a connection is established (the
 * caller reloads what it shows, since events before the first connection are not replayed),
 * onEvent(e) for each event, onState('live'|'reconnecting') as the connection changes.
 */
export function follow(url, { headers, onOpen, onEvent, onState, onFatal }) {
  const controller = new AbortController();
  let lastId = null;
  let stopped = false;
  let delay = 1000;

  async function connectOnce() {
    const target = lastId === null ? url : `${url}${url.includes('?') ? '&' : '?'}after=${lastId}`;
    const response = await fetch(target, {
      headers: { Accept: 'text/event-stream', ...headers() },
      cache: 'no-store',
      signal: controller.signal,
    });
    if (response.status === 401) {
      onFatal?.(response.status);
      stopped = true;
      return;
    }
    if (!response.ok || !response.body) throw new Error(`stream: HTTP ${response.status}`);
    delay = 1000;
    onState?.('live');
    onOpen?.(lastId !== null);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      for (const e of parser.feed(value)) {
        if (e.id !== null && e.id !== '') lastId = e.id;
        onEvent(e);
      }
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await connectOnce();
      } catch (_) {
        if (stopped) return;
      }
      if (stopped) return;
      onState?.('reconnecting');
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 15000);
    }
  })();

  return {
    stop() {
      stopped = true;
      controller.abort();
    },
  };
}
