//! The communes of France and how residents find theirs.
//!
//! Built once from the reference list (Etalab's "découpage administratif"); the
//! search matches a name prefix ignoring case, accents, hyphens and apostrophes
//! ("st etienne" finds Saint-Étienne), a postal-code prefix, or an INSEE code, and
//! ranks exact matches first, then the most populated communes.

use std::collections::HashMap;

use panneau_domain::InseeCode;
use serde::Serialize;

/// A commune as the apps read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Commune))]
pub struct CommuneView {
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "35238"))]
    pub code: InseeCode,
    #[cfg_attr(feature = "openapi", schema(example = "Rennes"))]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(example = "35"))]
    pub department: String,
    #[cfg_attr(feature = "openapi", schema(example = json!(["35000", "35200", "35700"])))]
    pub postcodes: Vec<String>,
    pub population: u32,
}

/// The reference list with its search indexes.
#[derive(Debug)]
pub struct Communes {
    list: Vec<CommuneView>,
    by_code: HashMap<InseeCode, u32>,
    /// (normalised name, index), sorted: a name prefix is a contiguous range.
    by_name: Vec<(String, u32)>,
    /// (normalised words after the first, index), sorted: "etienne" finds
    /// "Saint-Étienne" too, after the names that start with it.
    by_word: Vec<(String, u32)>,
    /// (postal code, index), sorted.
    by_postcode: Vec<(String, u32)>,
}

/// A line of the reference file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the commune list: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
}

/// How good a match is: lower is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Code,
    ExactName,
    NamePrefix,
    Postcode,
    WordPrefix,
}

impl Communes {
    /// Reads the tab-separated list (`code, name, department, postcodes, population`,
    /// `#` comments allowed).
    ///
    /// # Errors
    /// `ParseError` naming the first line that is not of that form.
    pub fn from_tsv(text: &str) -> Result<Self, ParseError> {
        let mut list = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let err = |reason| ParseError {
                line: n + 1,
                reason,
            };
            let mut fields = line.split('\t');
            let mut next = || fields.next().ok_or(err("missing field"));
            let code = InseeCode::parse(next()?).map_err(|_| err("bad INSEE code"))?;
            let name = next()?.to_owned();
            let department = next()?.to_owned();
            let postcodes = next()?
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            let population = next()?.parse().map_err(|_| err("bad population"))?;
            list.push(CommuneView {
                code,
                name,
                department,
                postcodes,
                population,
            });
        }
        Ok(Self::new(list))
    }

    pub fn new(list: Vec<CommuneView>) -> Self {
        let mut by_code = HashMap::with_capacity(list.len());
        let mut by_name = Vec::with_capacity(list.len());
        let mut by_word = Vec::new();
        let mut by_postcode = Vec::new();
        for (i, commune) in list.iter().enumerate() {
            let i = u32::try_from(i).expect("fewer than 4 billion communes");
            by_code.insert(commune.code, i);
            let key = normalise(&commune.name);
            for (at, _) in key.match_indices(' ') {
                by_word.push((key[at + 1..].to_owned(), i));
            }
            by_name.push((key, i));
            for postcode in &commune.postcodes {
                by_postcode.push((postcode.clone(), i));
            }
        }
        by_name.sort_unstable();
        by_word.sort_unstable();
        by_postcode.sort_unstable();
        Self {
            list,
            by_code,
            by_name,
            by_word,
            by_postcode,
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn get(&self, code: &InseeCode) -> Option<&CommuneView> {
        self.by_code.get(code).map(|&i| &self.list[i as usize])
    }

    pub fn iter(&self) -> impl Iterator<Item = &CommuneView> + '_ {
        self.list.iter()
    }

    /// The communes matching `query`, best first, at most `limit`.
    pub fn search(&self, query: &str, limit: usize) -> Vec<&CommuneView> {
        let mut best: HashMap<u32, Rank> = HashMap::new();
        let mut note = |i: u32, rank: Rank| {
            best.entry(i)
                .and_modify(|r| *r = (*r).min(rank))
                .or_insert(rank);
        };
        let trimmed = query.trim();
        if let Ok(code) = InseeCode::parse(trimmed)
            && let Some(&i) = self.by_code.get(&code)
        {
            note(i, Rank::Code);
        }
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
            for (_, i) in prefix_range(&self.by_postcode, trimmed) {
                note(*i, Rank::Postcode);
            }
        }
        // "st" may be "saint" or the start of "Strasbourg" until the word ends.
        let keys = [normalise(query), normalise_as_typed(query)];
        for key in keys.iter().filter(|k| !k.is_empty()) {
            for (name, i) in prefix_range(&self.by_name, key) {
                note(
                    *i,
                    if name == key {
                        Rank::ExactName
                    } else {
                        Rank::NamePrefix
                    },
                );
            }
            for (_, i) in prefix_range(&self.by_word, key) {
                note(*i, Rank::WordPrefix);
            }
        }
        let mut found: Vec<(Rank, u32)> = best.into_iter().map(|(i, r)| (r, i)).collect();
        let order = |&(rank, i): &(Rank, u32)| {
            let c = &self.list[i as usize];
            (rank, std::cmp::Reverse(c.population), c.code)
        };
        if found.len() > limit {
            found.select_nth_unstable_by_key(limit, order);
            found.truncate(limit);
        }
        found.sort_unstable_by_key(order);
        found
            .into_iter()
            .map(|(_, i)| &self.list[i as usize])
            .collect()
    }
}

fn prefix_range<'a>(sorted: &'a [(String, u32)], prefix: &str) -> &'a [(String, u32)] {
    let start = sorted.partition_point(|(k, _)| k.as_str() < prefix);
    let len = sorted[start..].partition_point(|(k, _)| k.starts_with(prefix));
    &sorted[start..start + len]
}

/// Lower case, no accents, words separated by single spaces, and the usual
/// abbreviations of "saint" spelled out: "St-Étienne" and "saint etienne" are
/// both "saint etienne".
pub fn normalise(text: &str) -> String {
    normalise_with(text, true)
}

/// Like [`normalise`], but a last word still being typed is left as it is.
fn normalise_as_typed(text: &str) -> String {
    let complete = text.ends_with(|c: char| !c.is_alphanumeric());
    normalise_with(text, complete)
}

fn normalise_with(text: &str, expand_last: bool) -> String {
    let mut flat = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            'à' | 'â' | 'ä' | 'á' | 'ã' | 'å' | 'À' | 'Â' | 'Ä' | 'Á' | 'Ã' | 'Å' => {
                flat.push('a')
            }
            'é' | 'è' | 'ê' | 'ë' | 'É' | 'È' | 'Ê' | 'Ë' => flat.push('e'),
            'î' | 'ï' | 'í' | 'ì' | 'Î' | 'Ï' | 'Í' | 'Ì' => flat.push('i'),
            'ô' | 'ö' | 'ó' | 'ò' | 'õ' | 'Ô' | 'Ö' | 'Ó' | 'Ò' | 'Õ' => flat.push('o'),
            'ù' | 'û' | 'ü' | 'ú' | 'Ù' | 'Û' | 'Ü' | 'Ú' => flat.push('u'),
            'ÿ' | 'Ÿ' | 'ý' | 'Ý' => flat.push('y'),
            'ç' | 'Ç' => flat.push('c'),
            'ñ' | 'Ñ' => flat.push('n'),
            'œ' | 'Œ' => flat.push_str("oe"),
            'æ' | 'Æ' => flat.push_str("ae"),
            c if c.is_alphanumeric() => flat.extend(c.to_lowercase()),
            // Hyphens, apostrophes (straight or curly), dots, brackets: word breaks.
            _ => flat.push(' '),
        }
    }
    let mut out = String::with_capacity(flat.len());
    let mut words = flat.split_whitespace().peekable();
    while let Some(word) = words.next() {
        if !out.is_empty() {
            out.push(' ');
        }
        let expand = expand_last || words.peek().is_some();
        out.push_str(match word {
            "st" if expand => "saint",
            "ste" if expand => "sainte",
            "sts" if expand => "saints",
            "stes" if expand => "saintes",
            other => other,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Communes {
        Communes::from_tsv(
            "# code\tname\tdepartment\tpostcodes\tpopulation\n\
             42218\tSaint-Étienne\t42\t42000,42100,42230\t173136\n\
             76575\tSaint-Étienne-du-Rouvray\t76\t76800\t28641\n\
             42050\tCellieu\t42\t42320\t1700\n\
             35238\tRennes\t35\t35000,35200,35700\t227830\n\
             35001\tAcigné\t35\t35690\t7000\n\
             13055\tMarseille\t13\t13001,13002\t873076\n\
             01001\tL'Abergement-Clémenciat\t01\t01400\t860\n\
             2A004\tAjaccio\t2A\t20000,20090\t73000\n",
        )
        .unwrap()
    }

    fn codes(found: Vec<&CommuneView>) -> Vec<&str> {
        found.into_iter().map(|c| c.code.as_str()).collect()
    }

    #[test]
    fn every_way_of_writing_saint_etienne_finds_it_first() {
        let communes = sample();
        for query in [
            "st etienne",
            "saint-étienne",
            "Saint Etienne",
            "ST-ÉTIENNE",
            "42000",
            "42218",
        ] {
            assert_eq!(codes(communes.search(query, 5))[0], "42218", "{query}");
        }
    }

    #[test]
    fn a_prefix_finds_the_most_populated_first() {
        let communes = sample();
        assert_eq!(codes(communes.search("saint", 5)), ["42218", "76575"]);
        assert_eq!(codes(communes.search("saint-étienne-d", 5)), ["76575"]);
    }

    #[test]
    fn postal_code_prefixes_match() {
        let communes = sample();
        assert_eq!(codes(communes.search("3500", 5)), ["35238"]);
        assert_eq!(codes(communes.search("35", 5)), ["35238", "35001"]);
        assert_eq!(codes(communes.search("20000", 5)), ["2A004"]);
    }

    #[test]
    fn apostrophes_and_inner_words_match() {
        let communes = sample();
        assert_eq!(codes(communes.search("l'abergement", 5)), ["01001"]);
        assert_eq!(codes(communes.search("abergement", 5)), ["01001"]);
        assert_eq!(codes(communes.search("acigne", 5)), ["35001"]);
    }

    #[test]
    fn name_prefixes_rank_before_inner_words() {
        let communes = Communes::from_tsv(
            "10001\tÉtienville\t10\t10000\t10\n42218\tSaint-Étienne\t42\t42000\t173136\n",
        )
        .unwrap();
        assert_eq!(codes(communes.search("etien", 5)), ["10001", "42218"]);
    }

    #[test]
    fn an_abbreviation_being_typed_also_matches_as_typed() {
        let communes = Communes::from_tsv(
            "67482\tStrasbourg\t67\t67000\t290000\n42218\tSaint-Étienne\t42\t42000\t173136\n",
        )
        .unwrap();
        assert_eq!(codes(communes.search("st", 5)), ["67482", "42218"]);
        assert_eq!(codes(communes.search("st ", 5)), ["42218"]);
    }

    #[test]
    fn the_limit_keeps_the_best() {
        let communes = sample();
        assert_eq!(codes(communes.search("a", 1)), ["2A004"]);
        assert!(communes.search("zzz", 5).is_empty());
        assert!(communes.search("--", 5).is_empty());
    }

    #[test]
    fn normalisation_folds_case_accents_and_separators() {
        assert_eq!(normalise("L'Haÿ-les-Roses"), "l hay les roses");
        assert_eq!(normalise("Œuilly"), "oeuilly");
        assert_eq!(normalise("  St-Jean   d’Angély "), "saint jean d angely");
    }

    #[test]
    fn malformed_lines_are_reported() {
        assert_eq!(
            Communes::from_tsv("35238\tRennes\n").unwrap_err(),
            ParseError {
                line: 1,
                reason: "missing field"
            }
        );
    }
}
