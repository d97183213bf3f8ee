//! The product catalog: every [`Product`] a shopper can put in a cart.
//!
//! A [`Catalog`] is always valid: every product passes [`Product::validate`], product ids and
//! product names are unique (the API looks products up by name), and there are at most
//! [`MAX_PRODUCTS`]. Products are kept sorted by product id (numeric ids in numeric order), so
//! listings and the JSON form are stable.
//!
//! The JSON form is the `/catalog` znode's data and `config/catalog.json`:
//! `{"products": [{"productid": "1", "name": "pork", "category": "1", "price": 61}, ...]}`.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::cart::{InputError, Product};

/// Most products a catalog may hold; keeps the znode well under ZooKeeper's 1 MiB limit for
/// products with ordinary field lengths.
pub const MAX_PRODUCTS: usize = 10_000;

/// A validated set of products, sorted by product id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    products: Vec<Product>,
    /// Index into `products` by name: the API resolves `item_name` on every request.
    by_name: HashMap<String, usize>,
    by_id: HashMap<String, usize>,
}

/// The JSON shape of a catalog.
#[derive(Serialize, Deserialize)]
struct CatalogDoc<P> {
    products: P,
}

impl Catalog {
    /// A catalog of exactly these products.
    ///
    /// # Errors
    /// [`CatalogError`] naming the first offending product by its position in `products`.
    pub fn new(products: Vec<Product>) -> Result<Catalog, CatalogError> {
        check_products(&products)?;
        let mut products = products;
        products.sort_by(|a, b| compare_ids(&a.productid, &b.productid));
        Ok(Self::indexed(products))
    }

    /// Parses and validates the JSON form. The bytes are untrusted (a file or a znode).
    ///
    /// # Errors
    /// [`CatalogError::Json`] when the bytes are not `{"products": [...]}`, otherwise as
    /// [`Catalog::new`].
    pub fn from_json(bytes: &[u8]) -> Result<Catalog, CatalogError> {
        let doc: CatalogDoc<Vec<Product>> =
            serde_json::from_slice(bytes).map_err(CatalogError::Json)?;
        Catalog::new(doc.products)
    }

    /// The JSON form, products sorted by product id.
    pub fn to_json(&self) -> Vec<u8> {
        let doc = CatalogDoc {
            products: &self.products,
        };
        #[expect(
            clippy::expect_used,
            reason = "a list of structs of strings and integers always serialises"
        )]
        serde_json::to_vec(&doc).expect("catalog serialises")
    }

    /// Every product, sorted by product id.
    pub fn products(&self) -> &[Product] {
        &self.products
    }

    /// Number of products.
    pub fn len(&self) -> usize {
        self.products.len()
    }

    /// Whether the catalog has no products (for example before it is loaded).
    pub fn is_empty(&self) -> bool {
        self.products.is_empty()
    }

    /// The product with this name.
    pub fn by_name(&self, name: &str) -> Option<&Product> {
        self.by_name.get(name).map(|&i| &self.products[i])
    }

    /// The product with this product id.
    pub fn by_id(&self, productid: &str) -> Option<&Product> {
        self.by_id.get(productid).map(|&i| &self.products[i])
    }

    /// Adds `product`, or replaces the product with the same product id.
    ///
    /// # Errors
    /// [`CatalogError`] when the product is invalid, its name belongs to another product, or
    /// the catalog is full; the catalog is then unchanged.
    pub fn upsert(&mut self, product: Product) -> Result<(), CatalogError> {
        let mut products = self.products.clone();
        match self.by_id.get(&product.productid) {
            Some(&i) => products[i] = product,
            None => products.push(product),
        }
        *self = Catalog::new(products)?;
        Ok(())
    }

    fn indexed(products: Vec<Product>) -> Catalog {
        let by_name = positions(&products, |p| &p.name);
        let by_id = positions(&products, |p| &p.productid);
        Catalog {
            products,
            by_name,
            by_id,
        }
    }
}

/// Checks the size limit, every product, and uniqueness of ids and names.
fn check_products(products: &[Product]) -> Result<(), CatalogError> {
    if products.len() > MAX_PRODUCTS {
        return Err(CatalogError::TooMany {
            count: products.len(),
            max: MAX_PRODUCTS,
        });
    }
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(products.len());
    let mut names: HashMap<&str, usize> = HashMap::with_capacity(products.len());
    for (index, product) in products.iter().enumerate() {
        product
            .validate()
            .map_err(|source| CatalogError::InvalidProduct {
                index,
                productid: product.productid.clone(),
                source,
            })?;
        if let Some(first) = ids.insert(&product.productid, index) {
            return Err(CatalogError::DuplicateId {
                index,
                first,
                productid: product.productid.clone(),
            });
        }
        if let Some(first) = names.insert(&product.name, index) {
            return Err(CatalogError::DuplicateName {
                index,
                first,
                name: product.name.clone(),
            });
        }
    }
    Ok(())
}

fn positions(products: &[Product], key: impl Fn(&Product) -> &String) -> HashMap<String, usize> {
    products
        .iter()
        .enumerate()
        .map(|(i, p)| (key(p).clone(), i))
        .collect()
}

/// Orders product ids so that numeric ids sort numerically ("2" before "10") and before
/// other ids, which sort as strings.
fn compare_ids(a: &str, b: &str) -> Ordering {
    let numeric = |s: &str| s.parse::<u64>().ok();
    match (numeric(a), numeric(b)) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// Why a catalog was refused. `index` is the product's position in the list being checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    #[error("catalog is not JSON of the form {{\"products\": [...]}}: {0}")]
    Json(#[source] serde_json::Error),
    #[error("catalog has {count} products, more than the limit of {max}")]
    TooMany { count: usize, max: usize },
    #[error("product {index} (productid {productid:?}): {source}")]
    InvalidProduct {
        index: usize,
        productid: String,
        #[source]
        source: InputError,
    },
    #[error("product {index}: productid {productid:?} is already used by product {first}")]
    DuplicateId {
        index: usize,
        first: usize,
        productid: String,
    },
    #[error("product {index}: name {name:?} is already used by product {first}")]
    DuplicateName {
        index: usize,
        first: usize,
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cart::InputProblem;

    fn product(id: &str, name: &str, price: u64) -> Product {
        Product {
            productid: id.into(),
            name: name.into(),
            category: "1".into(),
            price,
        }
    }

    #[test]
    fn products_are_sorted_and_found_by_name_and_id() {
        let catalog = Catalog::new(vec![
            product("10", "ten", 1),
            product("2", "two", 2),
            product("b", "bee", 3),
            product("a", "ay", 4),
        ])
        .unwrap();
        let ids: Vec<_> = catalog
            .products()
            .iter()
            .map(|p| p.productid.as_str())
            .collect();
        assert_eq!(ids, ["2", "10", "a", "b"]);
        assert_eq!(catalog.by_name("ten").unwrap().productid, "10");
        assert_eq!(catalog.by_id("a").unwrap().name, "ay");
        assert!(catalog.by_name("missing").is_none());
    }

    #[test]
    fn json_round_trips() {
        let catalog =
            Catalog::new(vec![product("1", "pork", 61), product("2", "soap", 36)]).unwrap();
        let again = Catalog::from_json(&catalog.to_json()).unwrap();
        assert_eq!(again, catalog);
    }

    #[test]
    fn the_shipped_default_catalog_is_valid_and_holds_the_seed_products() {
        let bytes = include_bytes!("../../config/catalog.json");
        let catalog = Catalog::from_json(bytes).unwrap();
        assert!(catalog.len() >= 24);
        let pork = catalog.by_name("pork").unwrap();
        assert_eq!(
            (pork.productid.as_str(), pork.category.as_str(), pork.price),
            ("1", "1", 61)
        );
        let soap = catalog.by_name("soap").unwrap();
        assert_eq!(
            (soap.productid.as_str(), soap.category.as_str(), soap.price),
            ("2", "1", 36)
        );
        let yogurt = catalog.by_name("yogurt").unwrap();
        assert_eq!((yogurt.category.as_str(), yogurt.price), ("2", 28));
        let cereals = catalog.by_name("cereals").unwrap();
        assert_eq!((cereals.category.as_str(), cereals.price), ("3", 69));
    }

    #[test]
    fn errors_name_the_product() {
        let err = Catalog::new(vec![product("1", "pork", 1), product("1", "beef", 2)]).unwrap_err();
        assert!(
            matches!(
                err,
                CatalogError::DuplicateId {
                    index: 1,
                    first: 0,
                    ..
                }
            ),
            "{err}"
        );

        let err = Catalog::new(vec![product("1", "pork", 1), product("2", "pork", 2)]).unwrap_err();
        assert!(
            matches!(err, CatalogError::DuplicateName { index: 1, .. }),
            "{err}"
        );

        let err = Catalog::new(vec![product("1", "", 1)]).unwrap_err();
        match err {
            CatalogError::InvalidProduct {
                index: 0, source, ..
            } => {
                assert_eq!(source.field, "name");
                assert_eq!(source.problem, InputProblem::Empty);
            }
            other => panic!("unexpected {other}"),
        }

        let err = Catalog::from_json(br#"{"products": [{"productid": "1"}]}"#).unwrap_err();
        assert!(matches!(err, CatalogError::Json(_)), "{err}");
        assert!(Catalog::from_json(b"not json").is_err());
    }

    #[test]
    fn too_many_products_are_refused() {
        let products = (0..=MAX_PRODUCTS)
            .map(|i| product(&i.to_string(), &format!("p{i}"), 1))
            .collect();
        assert!(matches!(
            Catalog::new(products),
            Err(CatalogError::TooMany { .. })
        ));
    }

    #[test]
    fn upsert_adds_or_replaces_and_keeps_names_unique() {
        let mut catalog = Catalog::new(vec![product("1", "pork", 61)]).unwrap();
        catalog.upsert(product("2", "soap", 36)).unwrap();
        catalog.upsert(product("1", "pork", 70)).unwrap();
        assert_eq!(catalog.len(), 2);
        assert_eq!(catalog.by_name("pork").unwrap().price, 70);

        let before = catalog.clone();
        assert!(catalog.upsert(product("3", "soap", 1)).is_err());
        assert_eq!(catalog, before);

        // Renaming a product frees its old name.
        catalog.upsert(product("1", "bacon", 70)).unwrap();
        assert!(catalog.by_name("pork").is_none());
        assert_eq!(catalog.by_name("bacon").unwrap().productid, "1");
    }
}
