//! Protection intervals across the tables of a report (statistical disclosure control, as
//! tau-argus audits a table: every suppressed cell's feasible interval by linear
//! programming).
//!
//! Suppressing each small cell and one complement per table stops subtraction within one
//! table. The four person tables of a month count the same persons, so a hidden cell can
//! still be pinned down from the others: `children` is_child=true minus the visible child
//! age bands of `victims_by_gender_age` gives the hidden one. [`intervals`] computes, for
//! every suppressed cell of a report, the smallest and largest count consistent with
//! everything the report publishes and with what anyone knows of how it is made:
//! - every published count; a suppressed cell holds at least one person (zero cells are
//!   omitted, so an omitted cell holds none, except a citizenship, which may be folded
//!   into `OTHER`);
//! - `victims_by_gender_age` and `children` count each person once: both are margins of
//!   one table of persons, and a child age band goes with is_child=true, an adult band with
//!   false (dropped as an assumption when the published counts contradict it);
//! - each person counts at least once in `victims_by_exploitation` and in
//!   `victims_by_citizenship` (`UNSPECIFIED` when none is known), and at most once in each
//!   of their values; a person without any value counts in no other value.
//!
//! [`protect`] suppresses more cells until every interval is at least `min_cell_count`
//! wide. The tables of referrals, return plans and hearings share no total with anything
//! published, so their hidden cells are unbounded above; the complement rule of
//! [`super::publish`] is all they need.
//!
//! Months count disjoint sets of persons (a person counts once, in one month), and a
//! period of several months is the sum of its published months, so a month's report is
//! audited on its own: nothing else published constrains its cells.

use microlp::{ComparisonOp, OptimizationDirection, Problem};

use super::{Published, CITIZENSHIP_TABLE, OTHER};

/// The table of persons by gender and age band.
pub const GENDER_AGE_TABLE: &str = "victims_by_gender_age";
/// The table of persons by childhood.
pub const CHILDREN_TABLE: &str = "children";
/// The table of persons by exploitation type.
pub const EXPLOITATION_TABLE: &str = "victims_by_exploitation";

/// Whether `table` counts persons (and is audited across tables).
pub fn counts_persons(table: &str) -> bool {
    [
        GENDER_AGE_TABLE,
        CHILDREN_TABLE,
        EXPLOITATION_TABLE,
        CITIZENSHIP_TABLE,
    ]
    .contains(&table)
}

/// The feasible values of a suppressed cell: `high` is infinite when nothing published
/// bounds it from above.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// Returns how many whole persons apart the ends are (`u64::MAX` when unbounded).
    pub fn width(&self) -> u64 {
        if !self.high.is_finite() {
            return u64::MAX;
        }
        let high = (self.high + 1e-6).floor();
        let low = (self.low - 1e-6).ceil();
        if high <= low {
            0
        } else {
            // Counts are far below 2^53, so the conversion is exact.
            (high - low) as u64
        }
    }

    /// An interval that protects nothing: what an audit that could not be run reports.
    const UNKNOWN: Interval = Interval {
        low: 0.0,
        high: 0.0,
    };
}

/// A linear expression: (variable, coefficient).
type Expr = Vec<(usize, f64)>;

#[derive(Debug, Clone, Copy)]
enum Op {
    Eq,
    Le,
    Ge,
}

/// The analyst's knowledge of one report as a linear program.
#[derive(Debug, Default)]
struct Model {
    /// Bounds of each variable.
    vars: Vec<(f64, f64)>,
    rows: Vec<(Expr, Op, f64)>,
    /// For each cell of the report, its count as an expression (person tables only).
    cells: Vec<Option<Expr>>,
    /// A row without variables that does not hold: no counts satisfy the model.
    contradiction: bool,
}

impl Model {
    fn var(&mut self, low: f64, high: f64) -> usize {
        self.vars.push((low, high));
        self.vars.len() - 1
    }

    /// A variable standing for cell `c`'s count: fixed when published, at least one when
    /// suppressed.
    fn cell_var(&mut self, c: &Published) -> usize {
        if c.suppressed {
            self.var(1.0, f64::INFINITY)
        } else {
            let n = c.count as f64;
            self.var(n, n)
        }
    }

    fn row(&mut self, expr: Expr, op: Op, rhs: f64) {
        if expr.is_empty() {
            // A row of no variable holds or not whatever the counts.
            let holds = match op {
                Op::Eq => rhs == 0.0,
                Op::Le => rhs >= 0.0,
                Op::Ge => rhs <= 0.0,
            };
            self.contradiction |= !holds;
            return;
        }
        self.rows.push((expr, op, rhs));
    }

    /// Builds the model of `cells`; with `linked`, child age bands go with is_child=true
    /// and adult bands with false.
    fn of(cells: &[Published], linked: bool) -> Self {
        let mut m = Model {
            cells: vec![None; cells.len()],
            ..Default::default()
        };
        let of_table =
            |t: &str| -> Vec<usize> { (0..cells.len()).filter(|&i| cells[i].table == t).collect() };
        let gender_age = of_table(GENDER_AGE_TABLE);
        let children = of_table(CHILDREN_TABLE);
        // One variable per pair of a gender-age cell and a childhood cell: the persons of
        // both. A table without cells is a margin of no one.
        let rows: Vec<Option<usize>> = if gender_age.is_empty() {
            vec![None]
        } else {
            gender_age.iter().copied().map(Some).collect()
        };
        let cols: Vec<Option<usize>> = if children.is_empty() {
            vec![None]
        } else {
            children.iter().copied().map(Some).collect()
        };
        let mut total: Expr = Vec::new();
        let mut by_row: Vec<Expr> = vec![Vec::new(); rows.len()];
        let mut by_col: Vec<Expr> = vec![Vec::new(); cols.len()];
        for (r, ga) in rows.iter().enumerate() {
            for (k, ch) in cols.iter().enumerate() {
                if ga.is_none() && ch.is_none() {
                    continue;
                }
                if linked {
                    if let (Some(ga), Some(ch)) = (ga, ch) {
                        if contradicts(&cells[*ga], &cells[*ch]) {
                            continue;
                        }
                    }
                }
                let y = m.var(0.0, f64::INFINITY);
                total.push((y, 1.0));
                by_row[r].push((y, 1.0));
                by_col[k].push((y, 1.0));
            }
        }
        for (r, ga) in rows.iter().enumerate() {
            if let Some(i) = ga {
                m.margin(&cells[*i], *i, by_row[r].clone());
            }
        }
        for (k, ch) in cols.iter().enumerate() {
            if let Some(i) = ch {
                m.margin(&cells[*i], *i, by_col[k].clone());
            }
        }
        m.values_of_persons(cells, &of_table(EXPLOITATION_TABLE), &total, None);
        let citizenship = of_table(CITIZENSHIP_TABLE);
        let other = citizenship
            .iter()
            .copied()
            .find(|&i| cells[i].labels.iter().any(|(_, v)| v == OTHER));
        let countries: Vec<usize> = citizenship
            .into_iter()
            .filter(|&i| Some(i) != other)
            .collect();
        m.values_of_persons(cells, &countries, &total, other);
        m
    }

    /// A margin of the persons table: `expr` equals the cell's count (or is at least one).
    fn margin(&mut self, c: &Published, i: usize, expr: Expr) {
        if c.suppressed {
            self.row(expr.clone(), Op::Ge, 1.0);
        } else {
            self.row(expr.clone(), Op::Eq, c.count as f64);
        }
        self.cells[i] = Some(expr);
    }

    /// A table of values a person may hold several of: each listed value at most once per
    /// person, nobody without a value counted in another, everyone at least once. `other`
    /// is the cell rare values were folded into (unbounded: it may hold many values).
    fn values_of_persons(
        &mut self,
        cells: &[Published],
        listed: &[usize],
        total: &Expr,
        other: Option<usize>,
    ) {
        if listed.is_empty() && other.is_none() {
            // A table the report does not hold tells nothing.
            return;
        }
        let unspecified = |i: &usize| cells[*i].labels.iter().any(|(_, v)| is_unspecified(v));
        let mut everyone: Expr = Vec::new();
        let other_var = other.map(|i| {
            let v = self.cell_var(&cells[i]);
            self.cells[i] = Some(vec![(v, 1.0)]);
            everyone.push((v, 1.0));
            v
        });
        // Persons without a value: their cell, or a share of OTHER when it was folded.
        let none = match listed.iter().find(|i| unspecified(i)) {
            Some(&i) => {
                let v = self.cell_var(&cells[i]);
                self.cells[i] = Some(vec![(v, 1.0)]);
                everyone.push((v, 1.0));
                Some(v)
            }
            None => other_var.map(|o| {
                let v = self.var(0.0, f64::INFINITY);
                self.row(vec![(v, 1.0), (o, -1.0)], Op::Le, 0.0);
                v
            }),
        };
        let at_most_everyone = |m: &mut Model, v: Option<usize>| {
            let mut e: Expr = total.iter().map(|&(y, _)| (y, -1.0)).collect();
            e.extend(v.map(|v| (v, 1.0)));
            e.extend(none.map(|n| (n, 1.0)));
            m.row(e, Op::Le, 0.0);
        };
        at_most_everyone(self, None);
        for &i in listed.iter().filter(|i| !unspecified(i)) {
            let v = self.cell_var(&cells[i]);
            self.cells[i] = Some(vec![(v, 1.0)]);
            everyone.push((v, 1.0));
            at_most_everyone(self, Some(v));
        }
        let mut covered = everyone;
        covered.extend(total.iter().map(|&(y, _)| (y, -1.0)));
        self.row(covered, Op::Ge, 0.0);
    }

    /// Returns the smallest or largest value of `objective`; `Ok(None)` when unbounded.
    fn optimum(&self, objective: &Expr, dir: OptimizationDirection) -> Result<Option<f64>, ()> {
        let mut coef = vec![0.0; self.vars.len()];
        for &(v, c) in objective {
            coef[v] += c;
        }
        let mut p = Problem::new(dir);
        let vars: Vec<_> = self
            .vars
            .iter()
            .zip(&coef)
            .map(|(&bounds, &c)| p.add_var(c, bounds))
            .collect();
        for (expr, op, rhs) in &self.rows {
            let terms: Vec<_> = expr.iter().map(|&(v, c)| (vars[v], c)).collect();
            let op = match op {
                Op::Eq => ComparisonOp::Eq,
                Op::Le => ComparisonOp::Le,
                Op::Ge => ComparisonOp::Ge,
            };
            p.add_constraint(terms.as_slice(), op, *rhs);
        }
        match p.solve() {
            Ok(s) => Ok(Some(s.objective())),
            Err(microlp::Error::Unbounded) => Ok(None),
            Err(_) => Err(()),
        }
    }

    fn feasible(&self) -> bool {
        !self.contradiction
            && self
                .optimum(&Vec::new(), OptimizationDirection::Minimize)
                .is_ok()
    }

    fn interval(&self, i: usize) -> Interval {
        let Some(Some(expr)) = self.cells.get(i) else {
            return Interval {
                low: 0.0,
                high: f64::INFINITY,
            };
        };
        let low = self.optimum(expr, OptimizationDirection::Minimize);
        let high = self.optimum(expr, OptimizationDirection::Maximize);
        match (low, high) {
            (Ok(Some(low)), Ok(high)) => Interval {
                low,
                high: high.unwrap_or(f64::INFINITY),
            },
            _ => Interval::UNKNOWN,
        }
    }
}

fn is_unspecified(v: &str) -> bool {
    v.ends_with("UNSPECIFIED")
}

/// Whether a gender-age cell and a childhood cell cannot hold the same person.
fn contradicts(gender_age: &Published, children: &Published) -> bool {
    let band = gender_age
        .labels
        .iter()
        .find(|(d, _)| d == "age_band")
        .map(|(_, v)| v.as_str());
    let child = children.labels.first().map(|(_, v)| v.as_str());
    let (Some(band), Some(child)) = (band, child) else {
        return false;
    };
    if is_unspecified(band) || !matches!(child, "true" | "false") {
        return false;
    }
    let child_band = matches!(band, "AGE_BAND_0_8" | "AGE_BAND_9_17");
    child_band != (child == "true")
}

/// Builds the analyst's model of a report: with the link between age bands and childhood,
/// unless the published counts contradict it.
fn model(cells: &[Published]) -> Option<Model> {
    let linked = Model::of(cells, true);
    if linked.feasible() {
        return Some(linked);
    }
    let unlinked = Model::of(cells, false);
    unlinked.feasible().then_some(unlinked)
}

/// Returns, for each cell of one month's report, the feasible interval of its count when it
/// is a suppressed cell of a person table (what an analyst holding the report can infer),
/// `None` for the others. A report whose model cannot be solved gets empty intervals, so
/// that [`protect`] hides more rather than less.
pub fn intervals(cells: &[Published]) -> Vec<Option<Interval>> {
    let solved = std::panic::catch_unwind(|| {
        let m = model(cells);
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (c.suppressed && counts_persons(&c.table)).then(|| match &m {
                    Some(m) => m.interval(i),
                    None => Interval::UNKNOWN,
                })
            })
            .collect::<Vec<_>>()
    });
    solved.unwrap_or_else(|_| {
        cells
            .iter()
            .map(|c| (c.suppressed && counts_persons(&c.table)).then_some(Interval::UNKNOWN))
            .collect()
    })
}

/// Returns the suppressed cells of a report whose interval is narrower than `min`.
pub fn exposed(cells: &[Published], min: u64) -> Vec<usize> {
    intervals(cells)
        .iter()
        .enumerate()
        .filter(|(_, iv)| iv.is_some_and(|iv| iv.width() < min))
        .map(|(i, _)| i)
        .collect()
}

/// Suppresses more cells of one month's report (the output of [`super::publish`]) until
/// every suppressed cell of a person table has an interval at least `min` wide. For each
/// exposed cell, the smallest published cell whose suppression protects it is suppressed
/// (cells of its own table first); where none does alone, the one that widens it most.
pub fn protect(mut cells: Vec<Published>, min: u64) -> Vec<Published> {
    while let Some(&target) = exposed(&cells, min).first() {
        let table = cells[target].table.clone();
        let mut candidates: Vec<usize> = (0..cells.len())
            .filter(|&i| !cells[i].suppressed && counts_persons(&cells[i].table))
            .collect();
        candidates.sort_by(|&a, &b| {
            let key = |i: usize| (cells[i].table != table, cells[i].count, &cells[i].labels);
            key(a).cmp(&key(b))
        });
        let mut best: Option<(usize, u64)> = None;
        for &c in &candidates {
            let mut trial = cells.clone();
            trial[c].suppressed = true;
            let width = intervals(&trial)[target].map_or(0, |iv| iv.width());
            if width >= min {
                best = Some((c, width));
                break;
            }
            if best.is_none_or(|(_, w)| width > w) {
                best = Some((c, width));
            }
        }
        let Some((chosen, _)) = best else {
            // Every cell of the person tables is hidden: nothing is left to add up.
            break;
        };
        cells[chosen].suppressed = true;
    }
    for c in &mut cells {
        if c.suppressed {
            c.count = 0;
        }
    }
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(table: &str, labels: &[(&str, &str)], count: u64, suppressed: bool) -> Published {
        Published {
            table: table.into(),
            labels: labels
                .iter()
                .map(|(d, v)| ((*d).to_owned(), (*v).to_owned()))
                .collect(),
            count: if suppressed { 0 } else { count },
            suppressed,
        }
    }

    fn ga(gender: &str, band: &str, count: u64, suppressed: bool) -> Published {
        cell(
            GENDER_AGE_TABLE,
            &[("gender", gender), ("age_band", band)],
            count,
            suppressed,
        )
    }

    fn child(v: &str, count: u64, suppressed: bool) -> Published {
        cell(CHILDREN_TABLE, &[("is_child", v)], count, suppressed)
    }

    /// The subtraction of the linked tables: is_child=true (16) minus the visible girls
    /// of 9-17 (13) leaves the hidden boys of 9-17: three.
    fn linked_report() -> Vec<Published> {
        vec![
            ga("GENDER_FEMALE", "AGE_BAND_9_17", 13, false),
            ga("GENDER_MALE", "AGE_BAND_9_17", 3, true),
            ga("GENDER_FEMALE", "AGE_BAND_30_38", 40, false),
            ga("GENDER_MALE", "AGE_BAND_30_38", 12, true),
            child("true", 16, false),
            child("false", 52, false),
        ]
    }

    #[test]
    fn a_hidden_cell_pinned_by_the_childhood_table_is_found_and_protected() {
        let report = linked_report();
        let iv = intervals(&report);
        let boys = iv[1].expect("suppressed");
        assert_eq!((boys.low, boys.high), (3.0, 3.0), "recoverable");
        assert_eq!(exposed(&report, 11), vec![1, 3]);
        let out = protect(report, 11);
        assert!(exposed(&out, 11).is_empty(), "{out:?}");
        let iv = intervals(&out);
        assert!(iv[1].expect("suppressed").width() >= 11, "{iv:?}");
        assert!(out.iter().filter(|c| c.suppressed).all(|c| c.count == 0));
    }

    #[test]
    fn contradicting_counts_drop_the_link_between_age_and_childhood() {
        // 20 children by the childhood table, none by age: the link cannot hold.
        let report = vec![
            ga("GENDER_FEMALE", "AGE_BAND_30_38", 40, false),
            ga("GENDER_MALE", "AGE_BAND_30_38", 4, true),
            ga("GENDER_MALE", "AGE_BAND_39_47", 16, true),
            child("true", 20, false),
            child("false", 40, false),
        ];
        let iv = intervals(&report);
        // Without the link: the two hidden cells add up to 20, each at least one.
        assert_eq!(iv[1].map(|i| (i.low, i.high)), Some((1.0, 19.0)));
    }

    #[test]
    fn multi_valued_tables_bound_hidden_cells_by_the_persons_counted() {
        // 30 persons (both margins visible); exploitation: 12 sexual, 25 forced labour,
        // begging hidden: a person counts at most once in it, so at most 30.
        let report = vec![
            ga("GENDER_FEMALE", "AGE_BAND_30_38", 30, false),
            child("false", 30, false),
            cell(
                EXPLOITATION_TABLE,
                &[("exploitation_type", "EXPLOITATION_TYPE_SEXUAL")],
                12,
                false,
            ),
            cell(
                EXPLOITATION_TABLE,
                &[("exploitation_type", "EXPLOITATION_TYPE_FORCED_LABOUR")],
                25,
                false,
            ),
            cell(
                EXPLOITATION_TABLE,
                &[("exploitation_type", "EXPLOITATION_TYPE_BEGGING")],
                0,
                true,
            ),
            cell(
                EXPLOITATION_TABLE,
                &[("exploitation_type", "EXPLOITATION_TYPE_UNSPECIFIED")],
                0,
                true,
            ),
        ];
        let iv = intervals(&report);
        assert_eq!(iv[4].map(|i| (i.low, i.high)), Some((1.0, 29.0)));
        // Persons without a type count in no other: at most 30 - 25.
        assert_eq!(iv[5].map(|i| (i.low, i.high)), Some((1.0, 5.0)));
        let out = protect(report, 11);
        assert!(exposed(&out, 11).is_empty(), "{out:?}");
    }

    #[test]
    fn hidden_record_cells_share_no_total_and_are_left_as_they_are() {
        let report = vec![
            cell("returns_by_status", &[("status", "A")], 0, true),
            cell("returns_by_status", &[("status", "B")], 0, true),
            cell("returns_by_status", &[("status", "C")], 30, false),
        ];
        assert_eq!(intervals(&report), vec![None, None, None]);
        assert_eq!(protect(report.clone(), 11), report);
    }

    #[test]
    fn an_interval_counts_whole_persons() {
        let iv = |low, high| Interval { low, high }.width();
        assert_eq!(iv(1.0, 12.0), 11);
        assert_eq!(iv(0.999_999_9, 12.000_000_1), 11);
        assert_eq!(iv(1.5, 2.5), 0);
        assert_eq!(iv(3.0, f64::INFINITY), u64::MAX);
    }
}
