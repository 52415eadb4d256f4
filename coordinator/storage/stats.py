"""The statistics' statements, mixed into `Tx` (storage/sql.py): images, pixel-steps and faults per
minute, images per model per day."""

from coordinator.storage.base import Driver, Row


class StatsStatements:
    driver: Driver

    async def record_fault(self, minute: int) -> None:
        await self.driver.write(
            "INSERT INTO fault_stats (minute, faults) VALUES (?, 1) ON CONFLICT (minute) DO UPDATE SET "
            "faults = fault_stats.faults + 1",
            (minute,),
        )

    async def minutes_since(self, minute: int) -> tuple[list[Row], list[Row]]:
        """Per minute from `minute` on: (images and pixel-steps made, faults)."""
        made = await self.driver.fetchall("SELECT minute, images, ps FROM stats WHERE minute >= ?", (minute,))
        faults = await self.driver.fetchall("SELECT minute, faults FROM fault_stats WHERE minute >= ?", (minute,))
        return made, faults

    async def record_stats(self, minute: int, images: int, pixelsteps: float) -> None:
        await self.driver.write(
            "INSERT INTO stats (minute, images, ps) VALUES (?, ?, ?) ON CONFLICT (minute) DO UPDATE SET "
            "images = stats.images + excluded.images, ps = stats.ps + excluded.ps",
            (minute, images, pixelsteps),
        )

    async def record_model_stats(self, day: int, model: str) -> None:
        await self.driver.write(
            "INSERT INTO model_stats (day, model, images) VALUES (?, ?, 1) ON CONFLICT (day, model) DO UPDATE SET "
            "images = model_stats.images + 1",
            (day, model),
        )

    async def model_stats_since(self, day: int) -> dict[str, int]:
        rows = await self.driver.fetchall(
            "SELECT model, SUM(images) AS images FROM model_stats WHERE day >= ? GROUP BY model", (day,)
        )
        return {row["model"]: int(row["images"]) for row in rows}

    async def stats_since(self, minute: int) -> tuple[int, float]:
        row = await self.driver.fetchone(
            "SELECT COALESCE(SUM(images), 0) AS images, COALESCE(SUM(ps), 0) AS ps FROM stats WHERE minute >= ?",
            (minute,),
        )
        return (int(row["images"]), float(row["ps"])) if row else (0, 0.0)
