//! Alert partitions leased through PostgreSQL advisory locks (`store::leases`): nodes on one
//! database share the 64 partitions fairly, never hold one twice, and a node that goes away
//! leaves its partitions to the others.
#![allow(clippy::unwrap_used)]

use store::Store;
use store::leases::{ALL_PARTITIONS, PARTITIONS};
use store::testing::TestDb;

#[tokio::test]
async fn nodes_share_the_partitions_and_take_over_a_dead_one() {
    let db = TestDb::postgres().await;
    let a_store = Store::connect(db.url()).await.unwrap();
    let b_store = Store::connect(db.url()).await.unwrap();
    let mut a = a_store.leases("node-a");
    let mut b = b_store.leases("node-b");
    assert!(a.shared());

    // Alone, a node takes every partition.
    let first = a.rebalance().await.unwrap();
    assert_eq!((first.gained, first.nodes), (ALL_PARTITIONS, 1));
    // A second node counts two, but finds nothing free yet.
    let joined = b.rebalance().await.unwrap();
    assert_eq!((joined.gained, joined.nodes), (0, 2));
    // The first gives back half; the second takes it: disjoint, together all.
    let gave = a.rebalance().await.unwrap();
    assert_eq!(gave.lost.count_ones(), PARTITIONS / 2);
    let took = b.rebalance().await.unwrap();
    assert_eq!(took.gained, gave.lost);
    assert_eq!(a.held() & b.held(), 0);
    assert_eq!(a.held() | b.held(), ALL_PARTITIONS);
    // Stable once shared.
    assert_eq!(a.rebalance().await.unwrap().lost, 0);
    assert_eq!(b.rebalance().await.unwrap().gained, 0);

    // The first node dies: its lease connection closes, and the survivor takes everything.
    drop(a);
    a_store.close().await;
    let mut after = b.rebalance().await.unwrap();
    for _ in 0..50 {
        if b.held() == ALL_PARTITIONS {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = b.rebalance().await.unwrap();
    }
    assert_eq!(b.held(), ALL_PARTITIONS, "last round: {after:?}");
    b.release_all().await;
    assert_eq!(b.held(), 0);
}

#[tokio::test]
async fn sqlite_holds_every_partition_alone() {
    let db = TestDb::sqlite().await;
    let store = Store::connect(db.url()).await.unwrap();
    let mut leases = store.leases("solo");
    assert!(!leases.shared());
    assert_eq!(leases.held(), ALL_PARTITIONS);
    assert_eq!(leases.rebalance().await.unwrap().nodes, 1);
    assert!(leases.holds(123_456));
}
