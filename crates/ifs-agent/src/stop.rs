//! Stop strings: generation ends at the first occurrence of any of them, and the text returned
//! ends just before it (as in OpenAI's API).

/// Finds the earliest stop string in `text`, looking only where a match could be new: at or
/// after `searched_to` minus the longest stop's length. Returns the byte offset it starts at.
#[must_use]
pub fn find_stop(text: &str, stops: &[String], searched_to: usize) -> Option<usize> {
    let longest = stops.iter().map(String::len).max()?;
    let mut from = searched_to.saturating_sub(longest.saturating_sub(1)).min(text.len());
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|stop| text[from..].find(stop.as_str()).map(|at| from + at))
        .min()
}

/// How many bytes at the end of `text` could be the beginning of a stop string, and so must not
/// be streamed yet: the longest such suffix (a proper prefix of some stop, on a character
/// boundary), or 0.
#[must_use]
pub fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|stop| {
            stop.char_indices()
                .skip(1)
                .map(|(end, _)| &stop[..end])
                .filter(|prefix| text.ends_with(prefix))
                .map(str::len)
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_earliest_stop_wins() {
        assert_eq!(find_stop("one. two\n\nthree", &stops(&["\n\n", "."]), 0), Some(3));
    }

    #[test]
    fn a_stop_spanning_the_previous_search_end_is_found() {
        // "END" arrives as "…EN" then "D": the second search starts early enough to see it.
        assert_eq!(find_stop("text EN", &stops(&["END"]), 0), None);
        assert_eq!(find_stop("text END", &stops(&["END"]), 7), Some(5));
    }

    #[test]
    fn text_that_may_begin_a_stop_is_held_back() {
        let list = stops(&["END", "\n\nUser:"]);
        assert_eq!(held_back("the E", &list), 1);
        assert_eq!(held_back("the EN", &list), 2);
        assert_eq!(held_back("the ENx", &list), 0);
        assert_eq!(held_back("line\n\nUse", &list), 5);
        assert_eq!(held_back("anything", &[]), 0);
        // Whole characters only: "é" is two bytes, held as one.
        assert_eq!(held_back("caf\u{e9}", &stops(&["\u{e9}t\u{e9}"])), 2);
    }

    #[test]
    fn no_stops_or_no_match_is_none() {
        assert_eq!(find_stop("anything", &[], 0), None);
        assert_eq!(find_stop("anything", &stops(&[""]), 0), None);
        assert_eq!(find_stop("héllo wörld", &stops(&["xyz"]), 3), None);
    }
}
