//! The catalog: countries, SKUs and their rules, plan allowances, Zone A, and rate
//! decks with longest-prefix lookup. Parsed from text; reading files is the caller's job.

use crate::err;
use crate::error::{ErrorCode, Result};
use crate::money::Currency;
use crate::phone::Country;
use rust_decimal::prelude::*;
use std::collections::HashMap;
use std::fmt;

/// The license SKUs of the product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sku {
    PhoneSystem,
    CallingPlanDomestic,
    CallingPlanInternational,
    AudioConferencing,
    CommunicationsCredits,
    E5,
}

impl Sku {
    pub const ALL: [Sku; 6] = [
        Sku::PhoneSystem,
        Sku::CallingPlanDomestic,
        Sku::CallingPlanInternational,
        Sku::AudioConferencing,
        Sku::CommunicationsCredits,
        Sku::E5,
    ];

    pub fn parse(text: &str) -> Result<Sku> {
        Sku::ALL.into_iter().find(|s| s.as_str() == text.trim()).ok_or_else(|| {
            let known: Vec<&str> = Sku::ALL.iter().map(|s| s.as_str()).collect();
            err!(ErrorCode::InvalidSku, "unknown SKU '{text}' (known: {})", known.join(", "))
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sku::PhoneSystem => "phone_system",
            Sku::CallingPlanDomestic => "calling_plan_domestic",
            Sku::CallingPlanInternational => "calling_plan_international",
            Sku::AudioConferencing => "audio_conferencing",
            Sku::CommunicationsCredits => "communications_credits",
            Sku::E5 => "e5",
        }
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of minute pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PoolKind {
    Domestic,
    International,
    Conferencing,
}

impl PoolKind {
    pub const ALL: [PoolKind; 3] = [PoolKind::Domestic, PoolKind::International, PoolKind::Conferencing];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolKind::Domestic => "domestic",
            PoolKind::International => "international",
            PoolKind::Conferencing => "conferencing",
        }
    }

    pub fn parse(text: &str) -> Result<PoolKind> {
        PoolKind::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| err!(ErrorCode::InvalidInput, "unknown pool kind '{text}'"))
    }
}

/// What one SKU means: its capability code, what it bundles, what it needs, which pools it feeds.
#[derive(Clone, Debug)]
pub struct SkuRule {
    pub sku: Sku,
    pub capability_code: String,
    pub includes: Vec<Sku>,
    pub requires: Vec<Sku>,
    pub pools: Vec<PoolKind>,
    pub description: String,
}

#[derive(Clone, Debug)]
pub struct CountryInfo {
    pub country: Country,
    pub name: String,
    pub calling_code: String,
    pub currency: Option<Currency>,
    pub emergency_numbers: Vec<String>,
    pub zone_a: bool,
}

/// Which country an allowance applies to: one country, or the whole organization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PoolScope {
    Country(Country),
    Org,
}

impl PoolScope {
    pub fn as_str(&self) -> &str {
        match self {
            PoolScope::Country(c) => c.as_str(),
            PoolScope::Org => "*",
        }
    }

    pub fn parse(text: &str) -> Result<PoolScope> {
        if text == "*" {
            Ok(PoolScope::Org)
        } else {
            Country::parse(text).map(PoolScope::Country)
        }
    }
}

/// Countries, SKUs and allowances (rate decks live in [`RateDeck`]).
#[derive(Clone, Debug)]
pub struct Catalog {
    countries: HashMap<Country, CountryInfo>,
    skus: HashMap<Sku, SkuRule>,
    allowances: HashMap<(PoolScope, PoolKind), i64>,
}

/// Reads a `#`-commented CSV with a header, handing each record and its line number to `row`.
fn read_csv(
    text: &str,
    what: &str,
    expected_header: &[&str],
    code: ErrorCode,
    mut row: impl FnMut(&csv::StringRecord, u64) -> Result<()>,
) -> Result<()> {
    let mut rdr = csv::ReaderBuilder::new().comment(Some(b'#')).trim(csv::Trim::All).from_reader(text.as_bytes());
    let header = rdr.headers().map_err(|e| err!(code, "{what}: unreadable header: {e}"))?.clone();
    let got: Vec<&str> = header.iter().collect();
    if got != expected_header {
        return Err(err!(code, "{what}: header must be '{}', found '{}'", expected_header.join(","), got.join(",")));
    }
    for rec in rdr.records() {
        let rec = rec.map_err(|e| err!(code, "{what}: {e}"))?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        row(&rec, line).map_err(|e| err!(code, "{what} line {line}: {}", e.message))?;
    }
    Ok(())
}

fn yes_no(text: &str) -> Result<bool> {
    match text {
        "yes" => Ok(true),
        "no" | "" => Ok(false),
        _ => Err(err!(ErrorCode::InvalidInput, "expected yes or no, found '{text}'")),
    }
}

fn sku_list(text: &str) -> Result<Vec<Sku>> {
    text.split_whitespace().map(Sku::parse).collect()
}

impl Catalog {
    /// Builds the catalog from the text of `countries.csv`, `skus.csv` and `allowances.csv`.
    pub fn parse(countries_csv: &str, skus_csv: &str, allowances_csv: &str) -> Result<Catalog> {
        let code = ErrorCode::InvalidInput;
        let mut countries = HashMap::new();
        read_csv(
            countries_csv,
            "countries.csv",
            &["iso2", "name", "calling_code", "currency", "emergency_numbers", "zone_a"],
            code,
            |r, _| {
                let country = Country::parse(&r[0])?;
                let info = CountryInfo {
                    country,
                    name: r[1].to_string(),
                    calling_code: r[2].to_string(),
                    currency: Currency::parse(&r[3]).ok(),
                    emergency_numbers: r[4].split_whitespace().map(str::to_string).collect(),
                    zone_a: yes_no(&r[5])?,
                };
                countries.insert(country, info);
                Ok(())
            },
        )?;
        let mut skus = HashMap::new();
        read_csv(
            skus_csv,
            "skus.csv",
            &["sku", "capability_code", "includes", "requires", "pools", "description"],
            code,
            |r, _| {
                let sku = Sku::parse(&r[0])?;
                let pools = r[4].split_whitespace().map(PoolKind::parse).collect::<Result<Vec<_>>>()?;
                skus.insert(
                    sku,
                    SkuRule {
                        sku,
                        capability_code: r[1].to_string(),
                        includes: sku_list(&r[2])?,
                        requires: sku_list(&r[3])?,
                        pools,
                        description: r[5].to_string(),
                    },
                );
                Ok(())
            },
        )?;
        for sku in Sku::ALL {
            if !skus.contains_key(&sku) {
                return Err(err!(code, "skus.csv has no row for {sku}"));
            }
        }
        let mut allowances = HashMap::new();
        read_csv(allowances_csv, "allowances.csv", &["country", "pool", "minutes"], code, |r, _| {
            let scope = PoolScope::parse(&r[0])?;
            let kind = PoolKind::parse(&r[1])?;
            let minutes: i64 = r[2].parse().map_err(|_| err!(code, "minutes '{}' is not a whole number", &r[2]))?;
            if minutes < 0 {
                return Err(err!(code, "minutes must not be negative"));
            }
            allowances.insert((scope, kind), minutes);
            Ok(())
        })?;
        Ok(Catalog { countries, skus, allowances })
    }

    /// The country, when the catalog knows it.
    pub fn country(&self, text: &str) -> Result<&CountryInfo> {
        let c = Country::parse(text)?;
        self.countries
            .get(&c)
            .ok_or_else(|| err!(ErrorCode::InvalidCountry, "'{text}' is not a country the catalog knows"))
    }

    pub fn country_info(&self, c: Country) -> Option<&CountryInfo> {
        self.countries.get(&c)
    }

    pub fn countries(&self) -> impl Iterator<Item = &CountryInfo> {
        self.countries.values()
    }

    pub fn emergency_numbers(&self, c: Country) -> &[String] {
        self.countries.get(&c).map(|i| i.emergency_numbers.as_slice()).unwrap_or(&[])
    }

    pub fn is_zone_a(&self, c: Country) -> bool {
        self.countries.get(&c).is_some_and(|i| i.zone_a)
    }

    pub fn sku(&self, sku: Sku) -> &SkuRule {
        // `parse` guarantees every SKU has a rule.
        &self.skus[&sku]
    }

    /// Monthly minutes one licensed user adds to a pool; 0 where no plan is sold.
    pub fn allowance(&self, scope: PoolScope, kind: PoolKind) -> i64 {
        self.allowances.get(&(scope, kind)).copied().unwrap_or(0)
    }

    /// The SKUs that, held directly or through a bundle, feed pools of `kind`.
    pub fn skus_feeding(&self, kind: PoolKind) -> Vec<Sku> {
        Sku::ALL
            .into_iter()
            .filter(|s| self.effective(&[*s]).iter().any(|e| self.sku(*e).pools.contains(&kind)))
            .collect()
    }

    /// The licenses a user effectively holds: those assigned plus what bundles include.
    pub fn effective(&self, assigned: &[Sku]) -> Vec<Sku> {
        let mut out: Vec<Sku> = Vec::new();
        let mut stack: Vec<Sku> = assigned.to_vec();
        while let Some(s) = stack.pop() {
            if !out.contains(&s) {
                out.push(s);
                stack.extend(self.sku(s).includes.iter().copied());
            }
        }
        out.sort();
        out
    }

    /// Checks that each assigned license's requirements are met by the effective set.
    pub fn check_requirements(&self, assigned: &[Sku]) -> Result<()> {
        let eff = self.effective(assigned);
        for s in assigned {
            for req in &self.sku(*s).requires {
                if !eff.contains(req) {
                    let code = if *req == Sku::PhoneSystem {
                        ErrorCode::LicenseRequiresPhoneSystem
                    } else {
                        ErrorCode::InvalidInput
                    };
                    return Err(err!(code, "{s} requires {req} (directly or through a bundle such as e5)"));
                }
            }
        }
        Ok(())
    }
}

/// The three kinds of rate deck.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeckKind {
    Outbound,
    DialOut,
    TollFree,
}

impl DeckKind {
    pub const ALL: [DeckKind; 3] = [DeckKind::Outbound, DeckKind::DialOut, DeckKind::TollFree];

    pub fn as_str(self) -> &'static str {
        match self {
            DeckKind::Outbound => "outbound",
            DeckKind::DialOut => "dial_out",
            DeckKind::TollFree => "toll_free",
        }
    }

    pub fn parse(text: &str) -> Result<DeckKind> {
        DeckKind::ALL
            .into_iter()
            .find(|k| k.as_str() == text)
            .ok_or_else(|| err!(ErrorCode::InvalidInput, "unknown deck kind '{text}' (outbound, dial_out, toll_free)"))
    }
}

/// One rate-deck entry. The price is an exact decimal per minute in major units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rate {
    pub prefix: String,
    pub name: String,
    pub connection_fee_minor: i64,
    pub per_minute: Decimal,
    pub increment_seconds: u32,
    pub premium: bool,
}

/// A rate deck of one kind and currency, with longest-prefix lookup.
#[derive(Clone, Debug)]
pub struct RateDeck {
    pub kind: DeckKind,
    pub currency: Currency,
    entries: Vec<Rate>,
    /// (prefix value << 4 | prefix length) -> index in `entries`.
    index: HashMap<u64, u32>,
    max_len: usize,
}

pub const RATE_DECK_HEADER: [&str; 6] =
    ["prefix", "name", "connection_fee", "rate_per_minute", "increment_seconds", "premium"];

fn prefix_key(digits: &str) -> u64 {
    let value: u64 = digits.bytes().fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
    (value << 4) | digits.len() as u64
}

impl RateDeck {
    pub fn new(kind: DeckKind, currency: Currency, entries: Vec<Rate>) -> Result<RateDeck> {
        let mut index = HashMap::with_capacity(entries.len());
        let mut max_len = 0;
        for (i, e) in entries.iter().enumerate() {
            if e.prefix.is_empty() || e.prefix.len() > 15 || !e.prefix.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err!(ErrorCode::InvalidRateDeck, "prefix '{}' must be 1 to 15 digits", e.prefix));
            }
            if index.insert(prefix_key(&e.prefix), i as u32).is_some() {
                return Err(err!(ErrorCode::InvalidRateDeck, "prefix '{}' appears twice", e.prefix));
            }
            max_len = max_len.max(e.prefix.len());
        }
        Ok(RateDeck { kind, currency, entries, index, max_len })
    }

    /// Parses a deck file (`prefix,name,connection_fee,rate_per_minute,increment_seconds,premium`).
    pub fn parse_csv(kind: DeckKind, currency: Currency, text: &str) -> Result<RateDeck> {
        let mut entries = Vec::new();
        read_csv(text, "rate deck", &RATE_DECK_HEADER, ErrorCode::InvalidRateDeck, |r, _| {
            let fee = Decimal::from_str_exact(&r[2])
                .map_err(|_| err!(ErrorCode::InvalidRateDeck, "connection_fee '{}' is not a decimal", &r[2]))?;
            let per_minute = Decimal::from_str_exact(&r[3])
                .map_err(|_| err!(ErrorCode::InvalidRateDeck, "rate_per_minute '{}' is not a decimal", &r[3]))?;
            if fee.is_sign_negative() || per_minute.is_sign_negative() {
                return Err(err!(ErrorCode::InvalidRateDeck, "prices must not be negative"));
            }
            let increment_seconds: u32 = if r[4].is_empty() {
                60
            } else {
                r[4].parse().map_err(|_| {
                    err!(ErrorCode::InvalidRateDeck, "increment_seconds '{}' is not a whole number", &r[4])
                })?
            };
            if !(1..=3600).contains(&increment_seconds) {
                return Err(err!(ErrorCode::InvalidRateDeck, "increment_seconds must be 1 to 3600"));
            }
            entries.push(Rate {
                prefix: r[0].to_string(),
                name: r[1].to_string(),
                connection_fee_minor: currency.decimal_to_minor(fee)?,
                per_minute,
                increment_seconds,
                premium: yes_no(&r[5]).map_err(|e| err!(ErrorCode::InvalidRateDeck, "{}", e.message))?,
            });
            Ok(())
        })?;
        if entries.is_empty() {
            return Err(err!(ErrorCode::InvalidRateDeck, "the deck has no rates"));
        }
        RateDeck::new(kind, currency, entries)
    }

    /// The entry with the longest prefix of `digits` (E.164 digits without '+').
    pub fn lookup(&self, digits: &str) -> Option<&Rate> {
        let n = digits.len().min(self.max_len);
        if !digits.as_bytes()[..n].iter().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut value: u64 = digits.as_bytes()[..n].iter().fold(0, |acc, b| acc * 10 + u64::from(b - b'0'));
        for len in (1..=n).rev() {
            if let Some(&i) = self.index.get(&((value << 4) | len as u64)) {
                return Some(&self.entries[i as usize]);
            }
            value /= 10;
        }
        None
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[Rate] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deck() -> RateDeck {
        let text = "# sample\nprefix,name,connection_fee,rate_per_minute,increment_seconds,premium\n\
                    1,NANP,0.00,0.0100,60,no\n44,UK,0.00,0.0300,60,no\n447,UK Mobile,0.05,0.1200,1,no\n1900,US premium,0.00,2.0000,60,yes\n";
        RateDeck::parse_csv(DeckKind::Outbound, Currency::parse("USD").unwrap(), text).unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let d = deck();
        assert_eq!(d.lookup("447700900123").unwrap().name, "UK Mobile");
        assert_eq!(d.lookup("442079460000").unwrap().name, "UK");
        assert_eq!(d.lookup("19005550100").unwrap().name, "US premium");
        assert_eq!(d.lookup("14155550100").unwrap().name, "NANP");
        assert!(d.lookup("33123").is_none());
        assert_eq!(d.lookup("447700900123").unwrap().connection_fee_minor, 5);
    }

    #[test]
    fn bad_decks_are_refused_with_line_numbers() {
        let usd = Currency::parse("USD").unwrap();
        let e = RateDeck::parse_csv(DeckKind::Outbound, usd, "prefix,name\n1,x\n").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRateDeck);
        let e = RateDeck::parse_csv(
            DeckKind::Outbound,
            usd,
            "prefix,name,connection_fee,rate_per_minute,increment_seconds,premium\n1,a,0,0.01,60,no\n1,b,0,abc,60,no\n",
        )
        .unwrap_err();
        assert!(e.message.contains("line 3"), "{}", e.message);
        let e = RateDeck::parse_csv(
            DeckKind::Outbound,
            usd,
            "prefix,name,connection_fee,rate_per_minute,increment_seconds,premium\n1,a,0,0.01,60,no\n1,b,0,0.02,60,no\n",
        )
        .unwrap_err();
        assert!(e.message.contains("twice"));
    }
}
