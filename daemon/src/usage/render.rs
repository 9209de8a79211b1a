//! `gate usage`'s output: an aligned table for people, CSV with a header and a JSON array
//! for tools. Pure functions of a [`UsageSummary`] (snapshot-tested).

use gate_core::accounting::money::NANOS_PER_USD;
use gate_core::accounting::period::date_string;
use gate_core::accounting::Usd;

use crate::admin::types::{UsageRow, UsageSummary};

/// `2026-12-03 15:04 UTC` of Unix milliseconds; `the start` for 0.
pub fn time_label(ms: u64) -> String {
    if ms == 0 {
        return "the start".to_owned();
    }
    let secs = ms / 1000;
    let of_day = secs % 86_400;
    format!(
        "{} {:02}:{:02} UTC",
        date_string(secs),
        of_day / 3600,
        of_day % 3600 / 60
    )
}

/// `$1.2345` (four decimals, rounded; `<$0.0001` for a smaller non-zero amount).
pub fn dollars(usd: Usd) -> String {
    let ten_thousandths = (usd.0 + 50_000) / 100_000;
    if ten_thousandths == 0 && usd.0 > 0 {
        return "<$0.0001".to_owned();
    }
    format!(
        "${}.{:04}",
        ten_thousandths / 10_000,
        ten_thousandths % 10_000
    )
}

/// The cost cell: the known sum, and `unknown` when any request had no price.
fn cost_cell(row: &UsageRow) -> String {
    match (row.unknown_cost_requests, row.requests) {
        (0, _) => dollars(row.cost_usd),
        (unknown, all) if unknown == all => "unknown".to_owned(),
        _ => format!("{} + unknown", dollars(row.cost_usd)),
    }
}

/// `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An exact decimal amount of dollars (`0.012345678`, `20`), for CSV.
fn exact_dollars(usd: Usd) -> String {
    let whole = usd.0 / NANOS_PER_USD;
    let frac = usd.0 % NANOS_PER_USD;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:09}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

fn group_cell(row: &UsageRow) -> String {
    row.group.clone().unwrap_or_else(|| "-".to_owned())
}

/// The table `gate usage` prints (`db` names the file, for the "nothing yet" message).
pub fn table(summary: &UsageSummary, db: &str) -> String {
    let since = time_label(summary.since_ms);
    if summary.rows.is_empty() {
        return format!(
            "No usage recorded since {since} (usage log: {db}).\n\
             Gate records each request there once a client has been answered; try --since all.\n"
        );
    }
    let by_key = summary.by == "key";
    let mut header = vec![summary.by.to_uppercase()];
    if by_key {
        header.push("NAME".to_owned());
    }
    header.extend(
        ["REQUESTS", "INPUT", "OUTPUT", "CACHED", "COST", "ERRORS"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    let line = |row: &UsageRow, group: String| {
        let mut cells = vec![group];
        if by_key {
            cells.push(row.name.clone().unwrap_or_else(|| "-".to_owned()));
        }
        cells.extend([
            thousands(row.requests),
            thousands(row.input_tokens),
            thousands(row.output_tokens),
            thousands(row.cached_tokens),
            cost_cell(row),
            thousands(row.errors),
        ]);
        cells
    };
    let mut lines: Vec<Vec<String>> = vec![header];
    lines.extend(summary.rows.iter().map(|r| line(r, group_cell(r))));
    let mut total = line(&summary.total, "TOTAL".to_owned());
    if by_key {
        total[1] = String::new();
    }
    lines.push(total);
    let columns = lines[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            lines
                .iter()
                .map(|l| l.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    // Text columns (group, name, cost) to the left, counts to the right.
    let text_columns = if by_key { 2 } else { 1 };
    let cost_column = columns - 2;
    let render = |cells: &[String]| {
        let mut out = String::new();
        for (c, cell) in cells.iter().enumerate() {
            if c > 0 {
                out.push_str("  ");
            }
            let width = widths[c];
            if c < text_columns || c == cost_column {
                out.push_str(&format!("{cell:<width$}"));
            } else {
                out.push_str(&format!("{cell:>width$}"));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = format!("Usage since {since}, by {}\n\n", summary.by);
    let last = lines.len() - 1;
    for (i, cells) in lines.iter().enumerate() {
        if i == last {
            let rule: usize = widths.iter().sum::<usize>() + 2 * (columns - 1);
            out.push_str(&"-".repeat(rule));
            out.push('\n');
        }
        out.push_str(&render(cells));
    }
    if summary.total.unknown_cost_requests > 0 {
        out.push_str(&format!(
            "\nunknown: {} request(s) used a model without a known price; the dollar amounts leave them out.\n",
            thousands(summary.total.unknown_cost_requests)
        ));
    }
    out
}

/// CSV with a header; costs as exact decimal dollars.
pub fn csv(summary: &UsageSummary) -> String {
    let mut out = format!(
        "{},{}requests,input_tokens,output_tokens,cached_tokens,cost_usd,unknown_cost_requests,errors\n",
        summary.by,
        if summary.by == "key" { "name," } else { "" }
    );
    for row in &summary.rows {
        let mut cells = vec![csv_field(row.group.as_deref().unwrap_or(""))];
        if summary.by == "key" {
            cells.push(csv_field(row.name.as_deref().unwrap_or("")));
        }
        cells.extend([
            row.requests.to_string(),
            row.input_tokens.to_string(),
            row.output_tokens.to_string(),
            row.cached_tokens.to_string(),
            exact_dollars(row.cost_usd),
            row.unknown_cost_requests.to_string(),
            row.errors.to_string(),
        ]);
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// The rows as a JSON array of objects (pretty-printed).
pub fn json(summary: &UsageSummary) -> String {
    let mut text = serde_json::to_string_pretty(&summary.rows).unwrap_or_else(|_| "[]".into());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn row(
        group: Option<&str>,
        name: Option<&str>,
        requests: u64,
        cost: u64,
        unknown: u64,
    ) -> UsageRow {
        UsageRow {
            group: group.map(str::to_owned),
            name: name.map(str::to_owned),
            requests,
            input_tokens: requests * 1234,
            output_tokens: requests * 56,
            cached_tokens: requests * 7,
            cost_usd: Usd(cost),
            unknown_cost_requests: unknown,
            errors: requests / 10,
        }
    }

    fn summary(by: &str, rows: Vec<UsageRow>) -> UsageSummary {
        UsageSummary {
            since_ms: 1_796_310_245_000,
            by: by.to_owned(),
            total: crate::usage::store::total(&rows),
            rows,
        }
    }

    fn by_key() -> UsageSummary {
        summary(
            "key",
            vec![
                row(
                    Some("3fa2c1d4e5f6"),
                    Some("laptop"),
                    1200,
                    12_345_678_901,
                    0,
                ),
                row(Some("jwt:alice@example.com"), None, 31, 4_500_000, 2),
                row(Some("0a1b2c3d4e5f"), Some("ci, nightly"), 5, 0, 5),
            ],
        )
    }

    #[test]
    fn table_by_key() {
        expect![[r#"
            Usage since 2026-12-03 15:04 UTC, by key

            KEY                    NAME         REQUESTS      INPUT  OUTPUT  CACHED  COST                ERRORS
            3fa2c1d4e5f6           laptop          1,200  1,480,800  67,200   8,400  $12.3457               120
            jwt:alice@example.com  -                  31     38,254   1,736     217  $0.0045 + unknown        3
            0a1b2c3d4e5f           ci, nightly         5      6,170     280      35  unknown                  0
            ---------------------------------------------------------------------------------------------------
            TOTAL                                  1,236  1,525,224  69,216   8,652  $12.3502 + unknown     123

            unknown: 7 request(s) used a model without a known price; the dollar amounts leave them out.
        "#]]
        .assert_eq(&table(&by_key(), "/var/lib/gate/usage.db"));
    }

    #[test]
    fn table_by_day_and_upstream() {
        let days = summary(
            "day",
            vec![
                row(Some("2026-12-01"), None, 10, 1_000, 0),
                row(Some("2026-12-02"), None, 20, 20_000_000, 0),
            ],
        );
        expect![[r#"
            Usage since 2026-12-03 15:04 UTC, by day

            DAY         REQUESTS   INPUT  OUTPUT  CACHED  COST      ERRORS
            2026-12-01        10  12,340     560      70  <$0.0001       1
            2026-12-02        20  24,680   1,120     140  $0.0200        2
            --------------------------------------------------------------
            TOTAL             30  37,020   1,680     210  $0.0200        3
        "#]]
        .assert_eq(&table(&days, "usage.db"));
        let upstreams = summary(
            "upstream",
            vec![
                row(Some("openai"), None, 3, 1_500_000_000, 0),
                row(None, None, 2, 0, 0),
            ],
        );
        expect![[r#"
            Usage since 2026-12-03 15:04 UTC, by upstream

            UPSTREAM  REQUESTS  INPUT  OUTPUT  CACHED  COST     ERRORS
            openai           3  3,702     168      21  $1.5000       0
            -                2  2,468     112      14  $0.0000       0
            ----------------------------------------------------------
            TOTAL            5  6,170     280      35  $1.5000       0
        "#]]
        .assert_eq(&table(&upstreams, "usage.db"));
    }

    #[test]
    fn nothing_yet() {
        expect![[r#"
            No usage recorded since 2026-12-03 15:04 UTC (usage log: /var/lib/gate/usage.db).
            Gate records each request there once a client has been answered; try --since all.
        "#]]
        .assert_eq(&table(&summary("key", vec![]), "/var/lib/gate/usage.db"));
    }

    #[test]
    fn csv_and_json() {
        expect![[r#"
            key,name,requests,input_tokens,output_tokens,cached_tokens,cost_usd,unknown_cost_requests,errors
            3fa2c1d4e5f6,laptop,1200,1480800,67200,8400,12.345678901,0,120
            jwt:alice@example.com,,31,38254,1736,217,0.0045,2,3
            0a1b2c3d4e5f,"ci, nightly",5,6170,280,35,0,5,0
        "#]]
        .assert_eq(&csv(&by_key()));
        let models = summary(
            "model",
            vec![row(Some("gpt-\"4o\""), None, 1, 20 * NANOS_PER_USD, 0)],
        );
        expect![[r#"
            model,requests,input_tokens,output_tokens,cached_tokens,cost_usd,unknown_cost_requests,errors
            "gpt-""4o""",1,1234,56,7,20,0,0
        "#]]
        .assert_eq(&csv(&models));
        expect![[r#"
            [
              {
                "group": "gpt-\"4o\"",
                "requests": 1,
                "input_tokens": 1234,
                "output_tokens": 56,
                "cached_tokens": 7,
                "cost_usd": 20.0,
                "unknown_cost_requests": 0,
                "errors": 0
              }
            ]
        "#]]
        .assert_eq(&json(&models));
    }

    #[test]
    fn amounts() {
        assert_eq!(dollars(Usd(0)), "$0.0000");
        assert_eq!(dollars(Usd(49_999)), "<$0.0001");
        assert_eq!(dollars(Usd(50_000)), "$0.0001");
        assert_eq!(dollars(Usd(1_234_550_000)), "$1.2346");
        assert_eq!(exact_dollars(Usd(1_500_000_000)), "1.5");
        assert_eq!(exact_dollars(Usd(7)), "0.000000007");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(time_label(0), "the start");
    }
}
