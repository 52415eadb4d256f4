"""Who pays whom for an image: the economy's rules as pure functions (docs/security.md, "The economy").

Kudos are never created by a request nobody pays for:

- At submit, a registered requester's images are *funded* one by one while the account's available
  balance (balance minus what its unfinished funded images hold) covers their price. A funded
  image, when delivered, moves exactly its price from the requester to the node's owner: a spend
  and a reward of the same amount in one transaction, nothing minted.
- An unfunded image (anonymous, or beyond the balance) is still made, but the node is only minted a
  *volunteer* reward, from an allowance that refills at `volunteer_kudos_per_10_minutes` and holds
  at most that much: the most a node can farm is what it would earn in uptime. A new node's
  allowance starts empty, so sybil nodes bring nothing up front.
- An image its requester funded, made by the requester's own node, moves its price from the account to
  itself (`OWN_NODE`: a spend and a reward of the same amount, net zero): the node is told its reward, as
  AI Horde tells it, and nothing is minted. Being paid by oneself is not earning: it is not counted in
  the node's `kudos_rewards`, is never held in escrow (so it adds nothing to the node's verified record),
  and charges no shared key (coordinator/results.py `_pay`).
- Nothing at all for an unfunded image made by the requester's own node, or when an unfunded request
  came from the address the node submits from (a farmer feeding their own node).
- Nothing at all while the node's suspicion is at or past `suspicion_threshold`: its images are
  delivered, the requester is not charged, nobody is paid, and the node's page says why.
"""

import math
from dataclasses import dataclass

VOLUNTEER_PERIOD = 600.0  # seconds over which the allowance refills (as uptime kudos are paid)
OWN_NODE, SAME_ADDRESS, WITHHELD, FUNDED, VOLUNTEER = "own node", "same address", "withheld", "funded", "volunteer"
CHECK = "check"


@dataclass(frozen=True)
class Settlement:
    """What one delivered image moves: `charge` from the requester, `reward` to the node's owner.
    Equal when funded (`OWN_NODE` too: the same account both sides); a volunteer reward (minted) has no charge."""

    charge: float
    reward: float
    reason: str

    @property
    def self_paid(self) -> bool:
        """The requester's own node paid from the requester's own funds: a movement, not an earning."""
        return self.reason == OWN_NODE and self.reward > 0

    @property
    def minted(self) -> float:
        return self.reward - self.charge


def requester_key(account_id: int | None, address: str) -> str:
    """Whose images a job is, for the queue cap and the reservations: an account, or an anonymous address."""
    return f"account:{account_id}" if account_id else f"ip:{address}"


def funded_images(available: float, price: float, n: int) -> int:
    """How many of a request's `n` images the requester's available balance pays for (in hundredths,
    so a balance of exactly k prices funds k images)."""
    cents = round(price * 100)
    if cents <= 0:
        return n
    return max(0, min(n, round(available * 100) // cents))


def spendable(available: float, key_left: float | None) -> float:
    """What a request's images may be funded from: the requester's available balance, and through a shared key
    (coordinator/sharing.py) no more than the key has left (None: the key sets no limit). A shared key's
    request is its owner's in every other rule (`settle`: its owner's node is paid only by its owner)."""
    return available if key_left is None else min(available, key_left)


def volunteer_allowance(credit: float, since: float, now: float, per_period: float) -> float:
    """The node's volunteer allowance now: `credit` as of `since`, refilled evenly, capped at one period's."""
    return min(per_period, credit + max(0.0, now - since) * per_period / VOLUNTEER_PERIOD)


def settle(
    *,
    price: float,
    charge: float,
    requester_id: int,
    requester_address: str,
    owner_id: int,
    node_address: str,
    withheld: bool,
    allowance: float,
    check: bool = False,
) -> Settlement:
    """The movement for one delivered image. `charge` is what was reserved for it at submit (0: unfunded);
    `requester_id` is 0 for an anonymous requester. A spot check's re-run (`check`) is paid its image's
    price by the network, as any job would be: verification is a cost the network bears (docs/security.md)."""
    if withheld:
        return Settlement(0.0, 0.0, WITHHELD)
    if check:
        return Settlement(0.0, price, CHECK)
    if requester_id and requester_id == owner_id:
        return Settlement(charge, charge, OWN_NODE)  # from the account to itself: 0/0 when unfunded
    if charge > 0:
        return Settlement(charge, charge, FUNDED)
    if requester_address and requester_address == node_address:
        return Settlement(0.0, 0.0, SAME_ADDRESS)
    # Rounded down to the hundredth, so the allowance is never overdrawn.
    return Settlement(0.0, math.floor(round(max(0.0, min(price, allowance)) * 100, 6)) / 100, VOLUNTEER)


def withheld_reason(suspicion: int, threshold: int) -> str | None:
    """Why a node's rewards are withheld, as its owner sees it on the node's page; None when they are not."""
    if suspicion < threshold:
        return None
    return (
        f"rewards withheld: {suspicion} results came back faster than any real GPU could make them (suspicious "
        f"from {threshold}); its images are still delivered, unpaid and uncharged, until an operator clears "
        "it (`horde-coordinator trust NAME`)"
    )
