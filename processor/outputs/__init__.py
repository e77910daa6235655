"""Where a committed batch goes: InfluxDB (:mod:`.influx`, through the back ends of
:mod:`.writers`), the dead-letter topic (:mod:`.deadletters`) and the live feed (:mod:`.live`)."""
