//! Indexes a failed `CREATE INDEX CONCURRENTLY` leaves behind.
//!
//! A concurrent build commits its catalog entry first and then waits for other transactions;
//! a lock timeout, a cancel or a dropped connection there leaves the index in place with
//! `pg_index.indisvalid = false`. A retry's `IF NOT EXISTS` then skips it and the history row
//! says "applied" over an index the planner never uses (issue 19). So before a
//! `-- no-transaction` migration runs (a lock-timeout retry, a reconnect, a resume all come
//! through here), the invalid indexes it names are dropped; and after it ran, every index it
//! names must be valid before its history row is written.
//!
//! **Invariant:** only indexes the migration itself names are dropped, and only while invalid.
//! An unnamed `CREATE INDEX CONCURRENTLY … ON t` gets a fresh name on each attempt, so a retry
//! never skips over a broken one; the broken one stays (and `status --live` does not see it).

use tokio_postgres::Client;

/// The names, as written (schema and quotes kept), of the indexes `sql` builds concurrently.
pub fn concurrent_index_names(sql: &str) -> Vec<String> {
    let words = words_outside_comments(sql);
    let mut names = Vec::new();
    for (idx, word) in words.iter().enumerate() {
        if !word.eq_ignore_ascii_case("create") {
            continue;
        }
        let mut rest = words[idx + 1..].iter().map(String::as_str);
        let mut next = rest.next();
        if next.is_some_and(|word| word.eq_ignore_ascii_case("unique")) {
            next = rest.next();
        }
        if !next.is_some_and(|word| word.eq_ignore_ascii_case("index")) {
            continue;
        }
        if !rest
            .next()
            .is_some_and(|word| word.eq_ignore_ascii_case("concurrently"))
        {
            continue;
        }
        let mut name = rest.next();
        if name.is_some_and(|word| word.eq_ignore_ascii_case("if")) {
            // `IF NOT EXISTS name`
            name = rest.nth(2);
        }
        if let Some(name) = name.filter(|word| !word.eq_ignore_ascii_case("on")) {
            names.push(name.to_string());
        }
    }
    names
}

/// Drop the invalid indexes among `names` (left by an earlier attempt), concurrently, so the
/// migration builds them afresh. Returns the ones dropped.
pub async fn drop_invalid(
    client: &Client,
    names: &[String],
) -> Result<Vec<String>, tokio_postgres::Error> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let invalid: Vec<String> = client
        .query(
            "SELECT name FROM unnest($1::text[]) AS name \
             JOIN pg_index ON pg_index.indexrelid = to_regclass(name) \
             WHERE NOT pg_index.indisvalid",
            &[&names],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for name in &invalid {
        tracing::warn!(index = %name, "dropping the invalid index an interrupted CREATE INDEX CONCURRENTLY left, to build it again");
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
            .await?;
    }
    Ok(invalid)
}

/// A statement that fails (SQLSTATE 55000) naming every index of `names` that is invalid, so a
/// migration that left one is never recorded as applied; `None` when `names` is empty.
pub fn assert_valid_sql(names: &[String]) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    let literals: Vec<String> = names
        .iter()
        .map(|name| format!("'{}'", name.replace('\'', "''")))
        .collect();
    Some(format!(
        "DO $schemafleet$ DECLARE invalid text; BEGIN \
         SELECT string_agg(name, ', ') INTO invalid FROM unnest(ARRAY[{}]::text[]) AS name \
         JOIN pg_index ON pg_index.indexrelid = to_regclass(name) WHERE NOT pg_index.indisvalid; \
         IF invalid IS NOT NULL THEN RAISE EXCEPTION USING ERRCODE = '55000', \
         MESSAGE = format('index %s is INVALID after CREATE INDEX CONCURRENTLY; the migration is not recorded as applied, and a retry drops and rebuilds it', invalid); \
         END IF; END $schemafleet$",
        literals.join(", ")
    ))
}

/// Whitespace-separated words, with `--` and `/* */` comments removed and a `(` ending a word
/// (`ON t(c)`), which is all the lexing [`concurrent_index_names`] needs.
fn words_outside_comments(sql: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(character) = chars.next() {
        let starts_comment = match (character, chars.peek()) {
            ('-', Some('-')) => Some(false),
            ('/', Some('*')) => Some(true),
            _ => None,
        };
        match starts_comment {
            Some(block) => {
                chars.next();
                if block {
                    let mut previous = ' ';
                    for inner in chars.by_ref() {
                        if previous == '*' && inner == '/' {
                            break;
                        }
                        previous = inner;
                    }
                } else {
                    for inner in chars.by_ref() {
                        if inner == '\n' {
                            break;
                        }
                    }
                }
                flush(&mut word, &mut words);
            }
            None if character.is_whitespace() || character == '(' || character == ';' => {
                flush(&mut word, &mut words);
            }
            None => word.push(character),
        }
    }
    flush(&mut word, &mut words);
    words
}

fn flush(word: &mut String, words: &mut Vec<String>) {
    if !word.is_empty() {
        words.push(std::mem::take(word));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_concurrently_built_indexes_are_found() {
        let sql = "-- no-transaction\n-- CREATE INDEX CONCURRENTLY commented_out ON t (c);\n\
                   CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_account_id_idx ON orders (account_id);\n\
                   create unique index concurrently public.\"Odd\" on t(c);\n\
                   CREATE INDEX CONCURRENTLY ON t (c);\n\
                   CREATE INDEX plain_idx ON t (c);";
        assert_eq!(
            concurrent_index_names(sql),
            vec!["orders_account_id_idx".to_string(), "public.\"Odd\"".into()]
        );
        assert!(concurrent_index_names("/* CREATE INDEX CONCURRENTLY x ON t (c) */").is_empty());
    }

    #[test]
    fn the_validity_check_quotes_names() {
        assert!(assert_valid_sql(&[]).is_none());
        let sql = assert_valid_sql(&["it's".to_string()]).expect("a statement");
        assert!(sql.contains("ARRAY['it''s']"), "{sql}");
    }
}
