package protocol

// Adopt replaces the controller's replica of device id with r, as another
// controller instance stored it (one shared database, several instances,
// each device owned by one): the instance that takes a device over, or
// writes one it does not own, starts from the state last committed
// instead of its own older copy. A nil r forgets the device.
func (c *Controller) Adopt(id string, r *Replica) {
	if r == nil {
		c.Forget(id)
		return
	}
	r = r.Clone()
	r.Side = ControllerSide
	if r.Props == nil {
		r.Props = Props{}
	}
	c.devices[id] = r
	delete(c.greet, id)
}
