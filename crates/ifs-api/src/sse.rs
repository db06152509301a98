//! Server-sent events, read incrementally: bytes arrive in arbitrary pieces (an event split
//! across two reads, several events in one), so the decoder keeps what it has not finished and
//! hands out whole events. Follows the WHATWG rules the OpenAI and llama.cpp servers rely on:
//! `\n`, `\r\n` or `\r` line ends, `data:` lines joined with `\n`, `:` comment lines ignored.

/// One event: its `event:` name (None for the default, `message`) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: Option<String>,
    pub data: String,
}

/// An incremental event-stream decoder that refuses to hold more than `limit` bytes of one event.
#[derive(Debug)]
pub struct Decoder {
    line: Vec<u8>,
    name: Option<String>,
    data: Option<String>,
    held: usize,
    limit: usize,
    /// A `\r` ended the last line: a `\n` right after it belongs to the same line end.
    after_cr: bool,
}

/// An event longer than the decoder's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an event is longer than {0} bytes")]
pub struct TooLong(pub usize);

impl Decoder {
    #[must_use]
    pub fn new(limit: usize) -> Self {
        Self { line: Vec::new(), name: None, data: None, held: 0, limit, after_cr: false }
    }

    /// Feeds bytes; returns the events they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Event>, TooLong> {
        let mut events = Vec::new();
        for &byte in bytes {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_ended(&line) {
                        events.push(event);
                    }
                }
                _ => {
                    self.line.push(byte);
                    self.held += 1;
                    if self.held > self.limit {
                        return Err(TooLong(self.limit));
                    }
                }
            }
        }
        Ok(events)
    }

    fn line_ended(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            // A blank line dispatches the event, if it had data.
            self.held = 0;
            let name = self.name.take();
            return self.data.take().map(|data| Event { name, data });
        }
        if line.starts_with(b":") {
            return None;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = line.split_once(':').unwrap_or((&line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.name = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: Option<&str>, data: &str) -> Event {
        Event { name: name.map(str::to_owned), data: data.to_owned() }
    }

    #[test]
    fn events_split_anywhere_come_out_whole_and_in_order() {
        let stream = b": keep-alive\n\ndata: {\"a\":1}\n\nevent: delta\r\ndata: one\r\ndata: two\r\n\r\ndata: [DONE]\r\r";
        let whole = Decoder::new(1024).push(stream).unwrap();
        let expected =
            vec![event(None, "{\"a\":1}"), event(Some("delta"), "one\ntwo"), event(None, "[DONE]")];
        assert_eq!(whole, expected);
        for split in 0..stream.len() {
            let mut decoder = Decoder::new(1024);
            let mut events = decoder.push(&stream[..split]).unwrap();
            events.extend(decoder.push(&stream[split..]).unwrap());
            assert_eq!(events, expected, "split at {split}");
        }
    }

    #[test]
    fn an_unfinished_event_is_not_handed_out() {
        let mut decoder = Decoder::new(1024);
        assert_eq!(decoder.push(b"data: partial\n").unwrap(), vec![]);
        assert_eq!(decoder.push(b"\n").unwrap(), vec![event(None, "partial")]);
    }

    /// Events as a server would write them: names and data lines without line breaks.
    fn events() -> impl proptest::strategy::Strategy<Value = Vec<Event>> {
        use proptest::prelude::*;
        let line = "[^\r\n]{0,40}";
        let event = (proptest::option::of("[a-z]{1,8}"), proptest::collection::vec(line, 1..4))
            .prop_map(|(name, lines)| Event { name, data: lines.join("\n") });
        proptest::collection::vec(event, 0..6)
    }

    fn encode(events: &[Event], line_end: &str) -> Vec<u8> {
        let mut out = String::new();
        for event in events {
            if let Some(name) = &event.name {
                out.push_str(&format!("event: {name}{line_end}"));
            }
            for line in event.data.split('\n') {
                out.push_str(&format!("data: {line}{line_end}"));
            }
            out.push_str(line_end);
        }
        out.into_bytes()
    }

    proptest::proptest! {
        #[test]
        fn whatever_bytes_arrive_in_whatever_pieces_the_decoder_never_panics_and_agrees_with_itself(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..8),
        ) {
            let whole = Decoder::new(64).push(&bytes);
            let mut decoder = Decoder::new(64);
            let mut pieces = Vec::new();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut from = 0;
            let mut refused = None;
            for to in cuts.into_iter().chain([bytes.len()]) {
                match decoder.push(&bytes[from..to]) {
                    Ok(events) => pieces.extend(events),
                    Err(too_long) => { refused = Some(too_long); break; }
                }
                from = to;
            }
            match whole {
                Ok(events) => proptest::prop_assert_eq!((events, None), (pieces, refused)),
                Err(too_long) => proptest::prop_assert_eq!(Some(too_long), refused),
            }
        }

        #[test]
        fn written_events_are_read_back_exactly_with_any_line_end_and_split(
            written in events(),
            line_end in proptest::sample::select(vec!["\n", "\r\n", "\r"]),
            split in 0usize..2000,
        ) {
            let bytes = encode(&written, line_end);
            let split = split.min(bytes.len());
            let mut decoder = Decoder::new(1 << 16);
            let mut read = decoder.push(&bytes[..split]).unwrap();
            read.extend(decoder.push(&bytes[split..]).unwrap());
            proptest::prop_assert_eq!(read, written);
        }
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut decoder = Decoder::new(16);
        assert_eq!(decoder.push(b"data: 0123456789\ndata: 0123456789"), Err(TooLong(16)));
    }
}
