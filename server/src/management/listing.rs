//! Lists as RabbitMQ's management API gives them (`rabbit_mgmt_util`): filtered by
//! `name` when paged (a substring, or a regular expression with `use_regex=true`), sorted by
//! `sort` (a dotted path into each item) and `sort_reverse`, cut to `columns`, and, with
//! `page`, paged in an envelope that says how many there were.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::reply::{ApiError, ApiResult};

/// Largest `page_size`.
const MAX_PAGE_SIZE: u64 = 500;
/// `page_size` when not given.
const DEFAULT_PAGE_SIZE: u64 = 100;

/// A list's query parameters.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// 1-based page number; without it the whole list is given, unwrapped.
    pub page: Option<String>,
    /// Items per page.
    pub page_size: Option<String>,
    /// Only items whose name contains this (or matches it, with `use_regex`).
    pub name: Option<String>,
    /// `name` is a regular expression.
    pub use_regex: Option<String>,
    /// The dotted path to sort by.
    pub sort: Option<String>,
    /// Sort descending.
    pub sort_reverse: Option<String>,
    /// The dotted paths to keep, comma-separated.
    pub columns: Option<String>,
}

fn truthy(flag: Option<&String>) -> bool {
    flag.is_some_and(|v| v == "true")
}

/// The value at a dotted path.
fn at<'a>(item: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(item, |v, key| v.get(key))
}

/// Orders JSON values as RabbitMQ orders terms: numbers, then strings, then booleans,
/// then anything else (null, lists, objects), missing last. A total order, as sorting
/// needs, whatever mix of types a path holds.
fn compare(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            Some(Value::Number(_)) => 0,
            Some(Value::String(_)) => 1,
            Some(Value::Bool(_)) => 2,
            Some(_) => 3,
            None => 4,
        }
    }
    match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.total_cmp(&y)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

/// Keeps the dotted `columns` of an item.
fn select(item: &Value, columns: &[&str]) -> Value {
    let mut out = Map::new();
    for column in columns {
        let Some(value) = at(item, column) else {
            continue;
        };
        let mut keys = column.split('.').peekable();
        let mut node = &mut out;
        while let Some(key) = keys.next() {
            if keys.peek().is_none() {
                node.insert(key.to_owned(), value.clone());
                break;
            }
            let child = node
                .entry(key.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(child) = child else {
                break;
            };
            node = child;
        }
    }
    Value::Object(out)
}

fn page_number(raw: &str, what: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::bad_request(format!("{what} should be a positive integer")))
}

/// An item of a list. Filtering and sorting read its name and keys; its JSON, which
/// may be costly (a queue's holds its rates and policy), is built only for the items
/// shown, or one at a time for a sort key it cannot give directly.
pub trait Listed {
    /// Its name, which `name` filters on.
    fn name(&self) -> Option<&str>;
    /// The value at a dotted path: `Some` when known without building the JSON
    /// (`Some(None)`: known to be absent), `None` when only the JSON can tell.
    fn key(&self, path: &str) -> Option<Option<Value>>;
    /// Its JSON.
    fn into_json(self) -> Value;
    /// Its JSON, keeping the item (for a sort key).
    fn to_json(&self) -> Value;
}

impl Listed for Value {
    fn name(&self) -> Option<&str> {
        at(self, "name").and_then(Value::as_str)
    }

    fn key(&self, path: &str) -> Option<Option<Value>> {
        Some(at(self, path).cloned())
    }

    fn into_json(self) -> Value {
        self
    }

    fn to_json(&self) -> Value {
        self.clone()
    }
}

/// Filters, sorts, selects and pages `items` as `query` asks.
///
/// # Errors
/// 400 for a bad page, page size or regular expression, and for a page past the end.
pub fn list<T: Listed>(mut items: Vec<T>, query: &ListQuery) -> ApiResult<Value> {
    let total = items.len();
    // As RabbitMQ, `name` filters only a paged list.
    let name_filter = query
        .name
        .as_deref()
        .filter(|n| !n.is_empty() && query.page.is_some());
    if let Some(name) = name_filter {
        if truthy(query.use_regex.as_ref()) {
            let regex = regex::Regex::new(name)
                .map_err(|e| ApiError::bad_request(format!("invalid regex: {e}")))?;
            items.retain(|i| i.name().is_some_and(|n| regex.is_match(n)));
        } else {
            items.retain(|i| i.name().is_some_and(|n| n.contains(name)));
        }
    }
    let sort_paths: Vec<&str> = match query.sort.as_deref().filter(|s| !s.is_empty()) {
        Some(sort) => vec![sort],
        None => vec!["vhost", "name"],
    };
    // Each item's keys, its JSON built (and dropped) only when a key needs it.
    let mut keyed: Vec<(Vec<Option<Value>>, T)> = items
        .into_iter()
        .map(|item| {
            let mut built = None;
            let keys = sort_paths
                .iter()
                .map(|path| {
                    item.key(path).unwrap_or_else(|| {
                        at(built.get_or_insert_with(|| item.to_json()), path).cloned()
                    })
                })
                .collect();
            (keys, item)
        })
        .collect();
    keyed.sort_by(|(a, _), (b, _)| {
        a.iter()
            .zip(b)
            .map(|(x, y)| compare(x.as_ref(), y.as_ref()))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if truthy(query.sort_reverse.as_ref()) {
        keyed.reverse();
    }
    let columns: Option<Vec<&str>> = query
        .columns
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(|c| c.split(',').map(str::trim).collect());
    let shown = |items: Vec<(Vec<Option<Value>>, T)>| -> Vec<Value> {
        items
            .into_iter()
            .map(|(_, item)| {
                let item = item.into_json();
                match &columns {
                    Some(columns) => select(&item, columns),
                    None => item,
                }
            })
            .collect()
    };
    let Some(page) = query.page.as_deref() else {
        return Ok(Value::Array(shown(keyed)));
    };
    let page = page_number(page, "page")?;
    let page_size = match query.page_size.as_deref() {
        Some(size) => page_number(size, "page_size")?,
        None => DEFAULT_PAGE_SIZE,
    };
    if page_size > MAX_PAGE_SIZE {
        return Err(ApiError::bad_request(format!(
            "page_size should be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    let filtered = keyed.len() as u64;
    let page_count = filtered.div_ceil(page_size).max(1);
    if page > page_count {
        return Err(ApiError::bad_request(format!(
            "page out of range, page count is {page_count}"
        )));
    }
    let start = ((page - 1) * page_size) as usize;
    keyed.truncate(start + page_size as usize);
    let paged = shown(keyed.split_off(start.min(keyed.len())));
    Ok(json!({
        "filtered_count": filtered,
        "item_count": paged.len(),
        "items": paged,
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items() -> Vec<Value> {
        (1..=5)
            .map(|i| json!({ "name": format!("q{i}"), "vhost": "/", "messages": 10 - i, "stats": { "rate": i } }))
            .collect()
    }

    fn query(pairs: &[(&str, &str)]) -> ListQuery {
        let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        serde_json::from_value(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
                .collect::<Map<String, Value>>()
                .into(),
        )
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    #[test]
    fn pages_sort_filter_and_select_as_rabbitmq_does() {
        let listed = list(items(), &query(&[("page", "2"), ("page_size", "2")])).expect("page");
        assert_eq!(listed["total_count"], 5);
        assert_eq!(listed["page_count"], 3);
        assert_eq!(listed["items"][0]["name"], "q3");
        let sorted = list(items(), &query(&[("sort", "messages")])).expect("sort");
        assert_eq!(sorted[0]["name"], "q5");
        let reversed = list(
            items(),
            &query(&[("sort", "stats.rate"), ("sort_reverse", "true")]),
        )
        .expect("reverse");
        assert_eq!(reversed[0]["name"], "q5");
        let filtered = list(
            items(),
            &query(&[("name", "q[12]"), ("use_regex", "true"), ("page", "1")]),
        )
        .expect("regex");
        assert_eq!(filtered["filtered_count"], 2);
        let unpaged = list(items(), &query(&[("name", "q1")])).expect("unpaged");
        assert_eq!(unpaged.as_array().map(Vec::len), Some(5), "not filtered");
        let columns = list(items(), &query(&[("columns", "name,stats.rate")])).expect("columns");
        assert_eq!(columns[0], json!({ "name": "q1", "stats": { "rate": 1 } }));
        assert!(list(items(), &query(&[("page", "4"), ("page_size", "2")])).is_err());
        assert!(list(items(), &query(&[("page", "1"), ("page_size", "501")])).is_err());
        assert!(list(items(), &query(&[("page", "0")])).is_err());
    }

    /// An item that counts how often its JSON is built.
    struct Counted<'a> {
        name: String,
        built: &'a std::cell::Cell<usize>,
    }

    impl Listed for Counted<'_> {
        fn name(&self) -> Option<&str> {
            Some(&self.name)
        }

        fn key(&self, path: &str) -> Option<Option<Value>> {
            (path == "name").then(|| Some(json!(self.name)))
        }

        fn into_json(self) -> Value {
            self.to_json()
        }

        fn to_json(&self) -> Value {
            self.built.set(self.built.get() + 1);
            json!({ "name": self.name, "depth": self.name.len() })
        }
    }

    #[test]
    fn only_the_items_shown_are_built_unless_a_sort_key_needs_them() {
        let built = std::cell::Cell::new(0);
        let counted = || -> Vec<Counted<'_>> {
            (0..1000)
                .map(|i| Counted {
                    name: format!("q{i}"),
                    built: &built,
                })
                .collect()
        };
        let page = query(&[("page", "3"), ("page_size", "10"), ("sort", "name")]);
        let listed = list(counted(), &page).expect("a page");
        let mut names: Vec<String> = (0..1000).map(|i| format!("q{i}")).collect();
        names.sort();
        assert_eq!(listed["items"][0]["name"], names[20]);
        assert_eq!(built.get(), 10, "only the page's items");
        built.set(0);
        let by_depth = query(&[("page", "1"), ("page_size", "10"), ("sort", "depth")]);
        list(counted(), &by_depth).expect("a page");
        assert_eq!(built.get(), 1010, "each once for its key, then the page's");
    }

    #[test]
    fn values_of_mixed_types_sort_in_one_total_order() {
        let mixed: Vec<Value> = [
            json!(null),
            json!("a"),
            json!(2),
            json!(true),
            json!({}),
            json!(1),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, policy)| json!({ "name": format!("q{i}"), "policy": policy }))
        .chain([json!({ "name": "q-none" })])
        .collect();
        let sorted = list(mixed, &query(&[("sort", "policy")])).expect("sorted");
        let policies: Vec<Value> = sorted
            .as_array()
            .map(|all| all.iter().map(|q| q["policy"].clone()).collect())
            .unwrap_or_default();
        assert_eq!(
            policies[..5],
            [json!(1), json!(2), json!("a"), json!(true), json!(null)]
        );
        assert_eq!(sorted[6]["name"], "q-none", "missing last");
    }
}
