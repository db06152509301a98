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
    fn no_stops_or_no_match_is_none() {
        assert_eq!(find_stop("anything", &[], 0), None);
        assert_eq!(find_stop("anything", &stops(&[""]), 0), None);
        assert_eq!(find_stop("héllo wörld", &stops(&["xyz"]), 3), None);
    }
}
