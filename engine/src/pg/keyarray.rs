//! A batch of keys as statement parameters: one binary array per key
//! column, built from the keys' raw binary fields (as a cursor returned
//! them), so one statement takes the whole batch as `unnest($1::t[], ...)`
//! where a key table would cost a CREATE, a COPY and a DELETE per batch.

use bytes::{BufMut, BytesMut};
use postgres_protocol::types::{ArrayDimension, array_to_sql};
use tokio_postgres::types::{IsNull, Kind, ToSql, Type, to_sql_checked};

/// The values of one key column, each in its type's binary form. The
/// array's element type is the one the statement declares for the
/// parameter (`$n::type[]`), so any key type travels: enums as themselves,
/// domains as the type under them (whose binary form theirs is).
#[derive(Debug)]
pub struct KeyColumnArray<'a>(pub Vec<&'a [u8]>);

impl ToSql for KeyColumnArray<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let Kind::Array(member) = ty.kind() else {
            return Err(format!("a key array was bound to a parameter of type {ty}, not an array").into());
        };
        let len = i32::try_from(self.0.len())?;
        array_to_sql(
            Some(ArrayDimension { len, lower_bound: 1 }),
            member.oid(),
            self.0.iter(),
            |raw, buf| {
                buf.put_slice(raw);
                Ok(postgres_protocol::IsNull::No)
            },
            out,
        )?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(_))
    }

    to_sql_checked!();
}

/// One array per key column of `keys` (each a key's raw fields in key
/// order); `None` when a key lacks one of the `columns` fields.
pub fn key_columns<'a>(keys: &'a [&'a [Vec<u8>]], columns: usize) -> Option<Vec<KeyColumnArray<'a>>> {
    (0..columns)
        .map(|i| keys.iter().map(|k| k.get(i).map(Vec::as_slice)).collect::<Option<Vec<_>>>().map(KeyColumnArray))
        .collect()
}
