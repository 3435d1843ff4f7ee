//! Stop strings (`"stop": ["\n\n", "User:"]`) over streamed text.
//!
//! A stop string can arrive split over several tokens, and it must not be
//! sent to the client (OpenAI leaves it out). So text that could still turn
//! into a stop string — a tail of what was generated that is a prefix of one
//! — is held back until the next piece decides it.

/// Finds the first stop string in text that grows piece by piece, and says
/// which text is safe to send.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Everything generated so far (up to a stop string, once found).
    text: String,
    /// Bytes of `text` handed out. No stop string starts before this.
    sent: usize,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), ..Default::default() }
    }

    /// Adds `piece` and returns the text now safe to send, and whether a stop
    /// string was found (then the text is everything before it, and further
    /// pieces are ignored).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.text.push_str(piece);
        let pending = &self.text[self.sent..];
        if let Some(at) = self.stops.iter().filter_map(|s| pending.find(s.as_str())).min() {
            let end = self.sent + at;
            let out = self.text[self.sent..end].to_string();
            self.text.truncate(end);
            self.sent = end;
            self.stopped = true;
            return (out, true);
        }
        // Hold back the longest tail that begins some stop string.
        let hold = (self.sent..self.text.len())
            .filter(|&i| self.text.is_char_boundary(i))
            .find(|&i| {
                let tail = &self.text[i..];
                self.stops.iter().any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .unwrap_or(self.text.len());
        let out = self.text[self.sent..hold].to_string();
        self.sent = hold;
        (out, false)
    }

    /// The end of the stream: whatever was held back (it never became a stop string).
    pub fn finish(&mut self) -> String {
        let out = self.text[self.sent..].to_string();
        self.sent = self.text.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces`, returns (everything sent, stopped).
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool, Vec<String>) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut all = String::new();
        let mut sends = Vec::new();
        for p in pieces {
            let (t, stop) = m.push(p);
            all.push_str(&t);
            sends.push(t);
            if stop {
                return (all, true, sends);
            }
        }
        let t = m.finish();
        all.push_str(&t);
        sends.push(t);
        (all, false, sends)
    }

    #[test]
    fn no_stops_pass_everything_through_at_once() {
        let (all, stopped, sends) = run(&[], &["Hel", "lo", " world"]);
        assert_eq!((all.as_str(), stopped), ("Hello world", false));
        assert_eq!(sends, ["Hel", "lo", " world", ""]);
    }

    #[test]
    fn a_stop_split_over_pieces_is_found_and_not_sent() {
        let (all, stopped, sends) = run(&["User:"], &["Paris.", "\nUs", "er", ": next"]);
        assert_eq!((all.as_str(), stopped), ("Paris.\n", true));
        // "Us" and "User" were held back until they were decided.
        assert_eq!(sends, ["Paris.", "\n", "", ""]);
    }

    #[test]
    fn a_held_back_prefix_that_goes_elsewhere_is_released() {
        let (all, stopped, sends) = run(&["User:"], &["a Us", "ual day"]);
        assert_eq!((all.as_str(), stopped), ("a Usual day", false));
        assert_eq!(sends, ["a ", "Usual day", ""]);
        let (all, stopped, _) = run(&["User:"], &["end U"]);
        assert_eq!((all.as_str(), stopped), ("end U", false));
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_multibyte_text_is_safe() {
        let (all, stopped, _) = run(&["b", "é c"], &["aé", " c b"]);
        assert_eq!((all.as_str(), stopped), ("a", true));
        let (all, stopped, _) = run(&["éx"], &["ü", "é", "éy"]);
        assert_eq!((all.as_str(), stopped), ("üééy", false));
        let (all, stopped, _) = run(&["", "\n\n"], &["one\n", "\ntwo"]);
        assert_eq!((all.as_str(), stopped), ("one", true));
    }
}
