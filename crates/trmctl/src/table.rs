//! Aligned tables for people to read: what a node holds of a victim, field by field, beside
//! what crossed a border.

use std::io::Write;

use trm_proto::v1 as w;

/// Returns an enum's name as a person reads it: `GENDER_FEMALE` -> `female`,
/// `AGE_BAND_24_26` -> `24-26`, `AGE_BAND_48_PLUS` -> `48+`.
pub fn name<E>(v: i32, as_str: impl Fn(E) -> &'static str, prefix: &str) -> String
where
    E: TryFrom<i32>,
{
    match E::try_from(v) {
        Ok(e) => {
            let rest = as_str(e).trim_start_matches(prefix).to_lowercase();
            if prefix == "AGE_BAND_" {
                rest.replace("_plus", "+").replace('_', "-")
            } else {
                rest.replace('_', " ")
            }
        }
        Err(_) => "?".to_owned(),
    }
}

pub fn names<E>(vs: &[i32], as_str: impl Fn(E) -> &'static str + Copy, prefix: &str) -> String
where
    E: TryFrom<i32>,
{
    vs.iter()
        .map(|v| name(*v, as_str, prefix))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One row: a field and its value (empty: not held).
pub type Row = (&'static str, String);

fn push(rows: &mut Vec<Row>, field: &'static str, value: String) {
    rows.push((field, value));
}

fn gender(v: i32) -> String {
    name(v, |g: w::Gender| g.as_str_name(), "GENDER_")
}

fn age_band(v: i32) -> String {
    name(v, |a: w::AgeBand| a.as_str_name(), "AGE_BAND_")
}

fn urgency(v: i32) -> String {
    name(v, |u: w::Urgency| u.as_str_name(), "URGENCY_")
}

fn need_kinds(vs: &[i32]) -> String {
    names(vs, |k: w::NeedKind| k.as_str_name(), "NEED_KIND_")
}

fn yes_no(yes: bool) -> String {
    if yes { "yes" } else { "no" }.to_owned()
}

/// Returns the name of a value that may be unset (0: it did not cross), empty when unset.
fn unless_unset(v: i32, name_of: fn(i32) -> String) -> String {
    if v == 0 {
        String::new()
    } else {
        name_of(v)
    }
}

/// The rows of the exploitation, alike held and crossed.
fn exploitation_rows(rows: &mut Vec<Row>, e: &w::Exploitation) {
    let types = names(
        &e.types,
        |t: w::ExploitationType| t.as_str_name(),
        "EXPLOITATION_TYPE_",
    );
    push(rows, "exploitation", types);
    push(rows, "exploited in", e.countries.join(", "));
}

/// The rows of a victim record as its node holds it.
pub fn case_rows(c: &w::Case) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some(p) = &c.person {
        push(&mut rows, "given name", p.given_name.clone());
        push(&mut rows, "family name", p.family_name.clone());
        push(&mut rows, "date of birth", p.date_of_birth.clone());
        push(&mut rows, "age band", String::new());
        push(&mut rows, "gender", gender(p.gender));
        push(&mut rows, "citizenship", p.citizenship.join(", "));
        push(&mut rows, "languages", p.languages.join(", "));
        push(&mut rows, "document number", p.document_number.clone());
        push(&mut rows, "address", p.address.clone());
        push(&mut rows, "phone", p.phone.clone());
    }
    if let Some(n) = &c.needs {
        push(&mut rows, "needs", need_kinds(&n.kinds));
        push(&mut rows, "urgency", urgency(n.urgency));
        push(&mut rows, "case worker's notes", n.notes.clone());
    }
    if let Some(e) = &c.exploitation {
        exploitation_rows(&mut rows, e);
    }
    if let Some(ch) = &c.child {
        push(&mut rows, "child", yes_no(ch.is_child));
    }
    rows
}

/// The rows of what crossed a border, named as in [`case_rows`] (empty: did not cross).
pub fn disclosed_rows(d: &w::DisclosedCase) -> Vec<Row> {
    let mut rows = Vec::new();
    let id = d.identity.clone().unwrap_or_default();
    push(&mut rows, "given name", id.given_name);
    push(&mut rows, "family name", id.family_name);
    push(&mut rows, "date of birth", id.date_of_birth);
    push(&mut rows, "age band", unless_unset(d.age_band, age_band));
    push(&mut rows, "gender", unless_unset(d.gender, gender));
    push(&mut rows, "citizenship", d.citizenship.join(", "));
    push(&mut rows, "languages", d.languages.join(", "));
    push(&mut rows, "document number", id.document_number);
    push(&mut rows, "address", id.address);
    push(&mut rows, "phone", id.phone);
    let needs = d.needs.clone().unwrap_or_default();
    push(&mut rows, "needs", need_kinds(&needs.kinds));
    push(&mut rows, "urgency", unless_unset(needs.urgency, urgency));
    push(&mut rows, "case worker's notes", needs.notes);
    exploitation_rows(&mut rows, &d.exploitation.clone().unwrap_or_default());
    let child = d.child.map(|c| yes_no(c.is_child)).unwrap_or_default();
    push(&mut rows, "child", child);
    push(&mut rows, "pairwise reference", d.case_ref.clone());
    rows
}

/// Prints `held` beside `crossed`, one field a line, aligned: a field that did not cross
/// shows `-`, one the node does not hold is left out.
pub fn side_by_side(
    out: &mut impl Write,
    held_title: &str,
    held: &[Row],
    crossed_title: &str,
    crossed: &[Row],
) -> std::io::Result<()> {
    let mut fields: Vec<&'static str> = held.iter().map(|(f, _)| *f).collect();
    for (f, _) in crossed {
        if !fields.contains(f) {
            fields.push(f);
        }
    }
    let get = |rows: &[Row], f: &str| {
        rows.iter()
            .find(|(g, _)| *g == f)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let lines: Vec<(&str, String, String)> = fields
        .into_iter()
        .map(|f| (f, get(held, f), get(crossed, f)))
        .filter(|(_, h, c)| !h.is_empty() || !c.is_empty())
        .map(|(f, h, c)| {
            let c = if c.is_empty() { "-".to_owned() } else { c };
            let h = if h.is_empty() { "-".to_owned() } else { h };
            (f, h, c)
        })
        .collect();
    let w0 = lines.iter().map(|l| l.0.len()).max().unwrap_or(0).max(5);
    let w1 = lines
        .iter()
        .map(|l| l.1.chars().count())
        .max()
        .unwrap_or(0)
        .max(held_title.len());
    writeln!(
        out,
        "   {:<w0$}  {:<w1$}  {}",
        "field", held_title, crossed_title
    )?;
    writeln!(
        out,
        "   {}  {}  {}",
        "-".repeat(w0),
        "-".repeat(w1),
        "-".repeat(crossed_title.len().max(8))
    )?;
    for (f, h, c) in lines {
        writeln!(out, "   {f:<w0$}  {h:<w1$}  {c}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_that_did_not_cross_show_a_dash_and_columns_align() {
        let held = vec![
            ("given name", "Maria".to_owned()),
            ("gender", "female".to_owned()),
        ];
        let crossed = vec![
            ("given name", String::new()),
            ("gender", "female".to_owned()),
            ("pairwise reference", "r-1".to_owned()),
        ];
        let mut out = Vec::new();
        side_by_side(&mut out, "AT holds", &held, "crossed to RO", &crossed).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], "   given name          Maria     -");
        assert_eq!(lines[4], "   pairwise reference  -         r-1");
        assert!(!text.contains("Some("));
    }
}
