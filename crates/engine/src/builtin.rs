//! The catalog shipped in `catalog/`, compiled into the binary so a fresh install
//! needs no data files; operators replace rate decks with `rates import`.

use commcredits_core::catalog::{Catalog, DeckKind, RateDeck};
use commcredits_core::money::Currency;
use commcredits_core::Result;

pub const COUNTRIES: &str = include_str!("../../../catalog/countries.csv");
pub const SKUS: &str = include_str!("../../../catalog/skus.csv");
pub const ALLOWANCES: &str = include_str!("../../../catalog/allowances.csv");

const DECKS: &[(DeckKind, &str, &str)] = &[
    (DeckKind::Outbound, "USD", include_str!("../../../catalog/rates/outbound-USD.csv")),
    (DeckKind::Outbound, "EUR", include_str!("../../../catalog/rates/outbound-EUR.csv")),
    (DeckKind::Outbound, "GBP", include_str!("../../../catalog/rates/outbound-GBP.csv")),
    (DeckKind::DialOut, "USD", include_str!("../../../catalog/rates/dial_out-USD.csv")),
    (DeckKind::DialOut, "EUR", include_str!("../../../catalog/rates/dial_out-EUR.csv")),
    (DeckKind::DialOut, "GBP", include_str!("../../../catalog/rates/dial_out-GBP.csv")),
    (DeckKind::TollFree, "USD", include_str!("../../../catalog/rates/toll_free-USD.csv")),
    (DeckKind::TollFree, "EUR", include_str!("../../../catalog/rates/toll_free-EUR.csv")),
    (DeckKind::TollFree, "GBP", include_str!("../../../catalog/rates/toll_free-GBP.csv")),
];

pub fn catalog() -> Result<Catalog> {
    Catalog::parse(COUNTRIES, SKUS, ALLOWANCES)
}

pub fn decks() -> Result<Vec<RateDeck>> {
    DECKS.iter().map(|(kind, cur, text)| RateDeck::parse_csv(*kind, Currency::parse(cur)?, text)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use commcredits_core::catalog::{PoolKind, PoolScope};
    use commcredits_core::phone::Country;

    #[test]
    fn shipped_catalog_parses_and_holds_the_published_facts() {
        let c = catalog().unwrap();
        let us = Country::parse("US").unwrap();
        let de = Country::parse("DE").unwrap();
        assert_eq!(c.allowance(PoolScope::Country(us), PoolKind::Domestic), 3000);
        assert_eq!(c.allowance(PoolScope::Country(de), PoolKind::Domestic), 1200);
        assert_eq!(c.allowance(PoolScope::Country(us), PoolKind::International), 600);
        assert_eq!(c.allowance(PoolScope::Org, PoolKind::Conferencing), 60);
        assert_eq!(c.countries().filter(|i| i.zone_a).count(), 44);
        assert!(c.emergency_numbers(us).contains(&"911".to_string()));
        assert!(c.emergency_numbers(Country::parse("GB").unwrap()).contains(&"999".to_string()));
        let decks = decks().unwrap();
        assert_eq!(decks.len(), 9);
        for d in &decks {
            assert!(d.len() > 300, "{:?} {} has {} rates", d.kind, d.currency, d.len());
            // Every country the catalog knows can be rated.
            for info in c.countries() {
                assert!(
                    d.lookup(&info.calling_code).is_some(),
                    "{:?} {} lacks +{}",
                    d.kind,
                    d.currency,
                    info.calling_code
                );
            }
        }
    }
}
