//! Label selectors (`metav1.LabelSelector`), checked once and then matched.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::error::Malformed;

pub type Labels = BTreeMap<String, String>;

/// A checked selector: every term must hold. No terms selects everything, as `{}` does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Selector {
    /// Checks a selector the way the API server's validation does. The error names the
    /// field below the selector (`matchExpressions[1].operator`).
    pub fn parse(selector: &LabelSelector) -> Result<Self, (String, Malformed)> {
        let mut terms: Vec<Term> = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| Term::Equals(k.clone(), v.clone()))
            .collect();
        for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
            let values = req.values.clone().unwrap_or_default();
            let field = |f: &str| format!("matchExpressions[{i}].{f}");
            let key = req.key.clone();
            let term = match req.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err((
                        field("values"),
                        Malformed::MissingValues(req.operator.clone()),
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err((
                        field("values"),
                        Malformed::UnexpectedValues(req.operator.clone()),
                    ));
                }
                "In" => Term::In(key, values),
                "NotIn" => Term::NotIn(key, values),
                "Exists" => Term::Exists(key),
                "DoesNotExist" => Term::DoesNotExist(key),
                other => {
                    return Err((
                        field("operator"),
                        Malformed::UnknownOperator(other.to_owned()),
                    ));
                }
            };
            terms.push(term);
        }
        Ok(Self { terms })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.terms.iter().all(|term| match term {
            Term::Equals(k, v) => labels.get(k) == Some(v),
            Term::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            // NotIn and DoesNotExist hold for objects without the key (upstream's labels.Selector).
            Term::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Term::Exists(k) => labels.contains_key(k),
            Term::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|v| v.to_string()).collect()),
            }]),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn operators_follow_upstream_for_missing_keys() {
        let none = labels(&[]);
        let a = labels(&[("pod", "a")]);
        let b = labels(&[("pod", "b")]);
        let cases = [
            (expr("pod", "In", &["a"]), [false, true, false]),
            (expr("pod", "NotIn", &["a"]), [true, false, true]),
            (expr("pod", "Exists", &[]), [false, true, true]),
            (expr("pod", "DoesNotExist", &[]), [true, false, false]),
        ];
        for (sel, want) in cases {
            let sel = Selector::parse(&sel).unwrap();
            assert_eq!(
                [sel.matches(&none), sel.matches(&a), sel.matches(&b)],
                want,
                "{sel:?}"
            );
        }
        let all = Selector::parse(&LabelSelector::default()).unwrap();
        assert!(all.matches(&none) && all.matches(&a));
    }

    #[test]
    fn match_labels_and_expressions_must_all_hold() {
        let mut sel = expr("tier", "In", &["web", "db"]);
        sel.match_labels = Some(labels(&[("pod", "a")]));
        let sel = Selector::parse(&sel).unwrap();
        assert!(sel.matches(&labels(&[("pod", "a"), ("tier", "db")])));
        assert!(!sel.matches(&labels(&[("pod", "a")])));
        assert!(!sel.matches(&labels(&[("pod", "b"), ("tier", "web")])));
    }

    #[test]
    fn malformed_selectors_are_refused_with_their_field() {
        let err = |s| Selector::parse(&s).unwrap_err();
        assert_eq!(
            err(expr("pod", "Equals", &["a"])),
            (
                "matchExpressions[0].operator".into(),
                Malformed::UnknownOperator("Equals".into())
            )
        );
        assert_eq!(
            err(expr("pod", "In", &[])).1,
            Malformed::MissingValues("In".into())
        );
        assert_eq!(
            err(expr("pod", "Exists", &["a"])).1,
            Malformed::UnexpectedValues("Exists".into())
        );
    }
}
