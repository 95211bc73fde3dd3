//! Stop strings as OpenAI applies them: the answer ends before the first place where one of them
//! appears, wherever the tokens split it, and streamed text is held back while it could still be
//! the start of one, so that no client ever sees part of a stop string.

/// Text coming out of the decoder, cut at the first stop string.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released: it may be the start of a stop string.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops, held: String::new(), stopped: false }
    }

    /// Whether a stop string has appeared (the answer is complete).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes the next piece of decoded text and returns what can be released now.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|stop| self.held.find(stop.as_str())).min() {
            self.stopped = true;
            self.held.truncate(at);
            return std::mem::take(&mut self.held);
        }
        let keep = self.longest_open_suffix();
        let released = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        released
    }

    /// What is still held when generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Bytes at the end of the held text that begin some stop string (the longest such suffix).
    fn longest_open_suffix(&self) -> usize {
        let held = &self.held;
        held.char_indices()
            .map(|(at, _)| at)
            .find(|&at| self.stops.iter().any(|stop| stop.starts_with(&held[at..])))
            .map_or(0, |at| held.len() - at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut released: Vec<String> = pieces.iter().map(|p| matcher.push(p)).collect();
        let stopped = matcher.stopped();
        released.push(matcher.finish());
        (released, stopped)
    }

    #[test]
    fn cuts_before_a_stop_string_split_across_pieces() {
        let (released, stopped) = run(&["\nUser:"], &["Blue.", "\nUs", "er: more", " text"]);
        assert!(stopped);
        assert_eq!(released.concat(), "Blue.");
        // Nothing of the stop string was released while it was still open.
        assert_eq!(released[1], "");
    }

    #[test]
    fn releases_held_text_that_turns_out_not_to_stop() {
        let (released, stopped) = run(&["END"], &["a E", "N", "d", "!"]);
        assert!(!stopped);
        assert_eq!(released, ["a ", "", "ENd", "!", ""]);
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let (released, _) = run(&["world", "lo"], &["hello world"]);
        assert_eq!(released.concat(), "hel");
    }

    #[test]
    fn without_stop_strings_text_passes_through() {
        let (released, stopped) = run(&[], &["héllo", " wörld"]);
        assert!(!stopped);
        assert_eq!(released, ["héllo", " wörld", ""]);
    }

    #[test]
    fn multibyte_text_is_held_at_character_boundaries() {
        let (released, stopped) = run(&["éé"], &["aé", "é b"]);
        assert!(stopped);
        assert_eq!(released.concat(), "a");
    }
}
