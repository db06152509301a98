//! Turns the byte pieces of generated tokens into text without ever splitting a character: a
//! multi-byte UTF-8 character may arrive spread over several tokens, so incomplete trailing
//! bytes wait for the next piece. Invalid bytes become U+FFFD rather than an error.

/// An incremental UTF-8 decoder.
#[derive(Debug, Default, Clone)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one piece; returns the text it completes (possibly empty).
    pub fn push(&mut self, piece: &[u8]) -> String {
        self.pending.extend_from_slice(piece);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(error) => {
                    let valid = error.valid_up_to();
                    // SAFETY-free: the prefix was just validated.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match error.error_len() {
                        // An incomplete character at the end: keep it for the next piece.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never be valid: replace and go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: bytes still waiting can no longer complete a character.
    pub fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            String::new()
        } else {
            self.pending.clear();
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(pieces: &[&[u8]]) -> String {
        let mut decoder = Utf8Decoder::new();
        let mut text: String = pieces.iter().map(|p| decoder.push(p)).collect();
        text.push_str(&decoder.finish());
        text
    }

    #[test]
    fn whole_pieces_pass_through() {
        assert_eq!(decode_all(&[b"Hello", b", ", "wörld".as_bytes()]), "Hello, wörld");
    }

    #[test]
    fn a_character_split_across_tokens_comes_out_whole() {
        let crab = "🦀".as_bytes(); // four bytes
        let mut decoder = Utf8Decoder::new();
        assert_eq!(decoder.push(b"I am a "), "I am a ");
        assert_eq!(decoder.push(&crab[..1]), "");
        assert_eq!(decoder.push(&crab[1..3]), "");
        assert_eq!(decoder.push(&[crab[3], b'!']), "🦀!");
        assert_eq!(decoder.finish(), "");
    }

    #[test]
    fn every_split_of_multibyte_text_decodes_the_same() {
        let text = "é中🦀ü";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            for cut2 in cut..=bytes.len() {
                assert_eq!(
                    decode_all(&[&bytes[..cut], &bytes[cut..cut2], &bytes[cut2..]]),
                    text,
                    "{cut} {cut2}"
                );
            }
        }
    }

    /// `bytes` cut at the given places (each taken modulo the length, in any order).
    fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut start = 0;
        let mut out: Vec<&[u8]> = cuts
            .iter()
            .map(|&c| std::mem::replace(&mut start, c))
            .zip(&cuts)
            .map(|(a, &b)| &bytes[a..b])
            .collect();
        out.push(&bytes[start..]);
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]

        /// However tokens cut them, any bytes decode exactly as the standard library's lossy
        /// decoding of the whole: valid text unchanged, each invalid sequence one U+FFFD.
        #[test]
        fn any_bytes_in_any_pieces_decode_as_the_whole_does(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            text in ".{0,16}",
            cuts in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..8),
        ) {
            proptest::prop_assert_eq!(decode_all(&pieces(&bytes, &cuts)), String::from_utf8_lossy(&bytes));
            proptest::prop_assert_eq!(decode_all(&pieces(text.as_bytes(), &cuts)), text);
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        assert_eq!(decode_all(&[b"a\xffb"]), "a\u{fffd}b");
        assert_eq!(decode_all(&[b"ok", &"🦀".as_bytes()[..2]]), "ok\u{fffd}");
    }
}
